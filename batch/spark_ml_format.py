"""A Spark ML ``PCAModel`` written without a JVM, in the format Spark ML's own writer uses, so that
``pyspark.ml.feature.PCAModel.load`` (and Scala's ``PCAModel.load``) read it as if Spark had saved it.

Spark ML saves a ``PCAModel`` (``DefaultParamsWriter`` + ``PCAModelWriter``) as:

- ``metadata/part-00000``: one JSON line: ``class``, ``timestamp`` (ms), ``sparkVersion``, ``uid``, ``paramMap``
  (``k``, ``inputCol``, ``outputCol``) and ``defaultParamMap``; then ``_SUCCESS``;
- ``data/part-00000-...parquet``: one row of two columns, ``pc`` (a ``DenseMatrix``: MatrixUDT's struct, type 1,
  column-major values, not transposed) and ``explainedVariance`` (a ``DenseVector``: VectorUDT's struct, type 1),
  with Spark's schema (the UDTs) in the Parquet footer's ``org.apache.spark.sql.parquet.row.metadata``, which is
  where Spark's reader finds the UDT types; snappy; then ``_SUCCESS``.

tests/test_refit_local.py loads a model written here with the real Spark and compares it with the Spark path's.
"""

from __future__ import annotations

import json
import time
from importlib import metadata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fruits.config import join_uri
from fruits.home.filesystem import FileSystem

MODEL_CLASS = "org.apache.spark.ml.feature.PCAModel"
# The column names of every PCA model the refit writes, by either engine (fruits.batch.pca_fit.pca_model too).
INPUT_COL, OUTPUT_COL = "vector", "pca_vector"
METADATA_FILE = "metadata/part-00000"
DATA_FILE = "data/part-00000-fruits-c000.snappy.parquet"


def _field(name: str, kind: str, nullable: bool) -> dict:
    return {"name": name, "type": kind, "nullable": nullable, "metadata": {}}


def _array(name: str, element: str) -> dict:
    return _field(name, {"type": "array", "elementType": element, "containsNull": False}, True)


MATRIX_SQL = {"type": "struct", "fields": [
    _field("type", "byte", False), _field("numRows", "integer", False), _field("numCols", "integer", False),
    _array("colPtrs", "integer"), _array("rowIndices", "integer"), _array("values", "double"),
    _field("isTransposed", "boolean", False),
]}
VECTOR_SQL = {"type": "struct", "fields": [
    _field("type", "byte", False), _field("size", "integer", True), _array("indices", "integer"),
    _array("values", "double"),
]}
SPARK_SCHEMA = {"type": "struct", "fields": [
    _field("pc", {"type": "udt", "class": "org.apache.spark.ml.linalg.MatrixUDT", "pyClass": "pyspark.ml.linalg.MatrixUDT",
                  "sqlType": MATRIX_SQL}, True),
    _field("explainedVariance", {"type": "udt", "class": "org.apache.spark.ml.linalg.VectorUDT",
                                 "pyClass": "pyspark.ml.linalg.VectorUDT", "sqlType": VECTOR_SQL}, True),
]}


def _list(kind: pa.DataType) -> pa.DataType:
    return pa.list_(pa.field("element", kind, nullable=False))


ARROW_SCHEMA = pa.schema([
    pa.field("pc", pa.struct([
        pa.field("type", pa.int8(), False), pa.field("numRows", pa.int32(), False), pa.field("numCols", pa.int32(), False),
        pa.field("colPtrs", _list(pa.int32())), pa.field("rowIndices", _list(pa.int32())),
        pa.field("values", _list(pa.float64())), pa.field("isTransposed", pa.bool_(), False),
    ])),
    pa.field("explainedVariance", pa.struct([
        pa.field("type", pa.int8(), False), pa.field("size", pa.int32()), pa.field("indices", _list(pa.int32())),
        pa.field("values", _list(pa.float64())),
    ])),
])


def spark_version() -> str:
    """The installed pyspark's version (read from its package metadata: pyspark is not imported)."""
    try:
        return metadata.version("pyspark")
    except metadata.PackageNotFoundError:
        return "4.0.0"


def model_metadata(k: int, uid: str, now_ms: int) -> str:
    return json.dumps({
        "class": MODEL_CLASS, "timestamp": now_ms, "sparkVersion": spark_version(), "uid": uid,
        "paramMap": {"inputCol": INPUT_COL, "k": k, "outputCol": OUTPUT_COL},
        "defaultParamMap": {"outputCol": f"{uid}__output"},
    }, separators=(",", ":"))


def model_data(components: np.ndarray, explained: np.ndarray) -> bytes:
    """The Parquet file of the model's data: (d, k) ``components`` as a column-major DenseMatrix, ``explained``."""
    dim, k = components.shape
    row = {
        "pc": {"type": 1, "numRows": dim, "numCols": k, "colPtrs": None, "rowIndices": None,
               "values": np.asarray(components, dtype=np.float64).flatten(order="F").tolist(), "isTransposed": False},
        "explainedVariance": {"type": 1, "size": None, "indices": None,
                              "values": np.asarray(explained, dtype=np.float64).tolist()},
    }
    table = pa.Table.from_pylist([row], schema=ARROW_SCHEMA).replace_schema_metadata({
        "org.apache.spark.sql.parquet.row.metadata": json.dumps(SPARK_SCHEMA, separators=(",", ":")),
        "org.apache.spark.version": spark_version(),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def write_pca_model(files: FileSystem, uri: str, components: np.ndarray, explained: np.ndarray) -> None:
    """Save a ``PCAModel`` of (d, k) ``components`` and k explained-variance ratios at ``uri`` (replacing what an
    interrupted refit left there)."""
    files.delete(uri, recursive=True)
    now_ms = int(time.time() * 1000)
    uid = f"PCAModel_fruits_{now_ms // 1000}"
    files.write(join_uri(uri, DATA_FILE), model_data(components, explained))
    files.write(join_uri(uri, "data/_SUCCESS"), b"")
    files.write(join_uri(uri, METADATA_FILE), (model_metadata(components.shape[1], uid, now_ms) + "\n").encode("utf-8"))
    files.write(join_uri(uri, "metadata/_SUCCESS"), b"")
