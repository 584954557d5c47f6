"""Which Spark error this is, by Spark's error conditions (``PATH_NOT_FOUND``, ``SPARK_JOB_CANCELLED``), never by
its text: a message may change between Spark versions and languages, a condition is Spark's contract.

A captured error (``AnalysisException`` and pyspark's other ``PySparkException`` classes) says its condition with
``getCondition()``. An error pyspark does not convert reaches Python as a ``Py4JJavaError`` whose Java exception may
wrap the telling one: a job cancelled while ``toArrow`` waits for it is a ``SparkException`` without condition
("Exception thrown in awaitResult") caused by the ``SparkException`` ``SPARK_JOB_CANCELLED``. So the Java cause
chain is read too.
"""

from __future__ import annotations

from py4j.java_gateway import is_instance_of
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException


def error_conditions(exc: BaseException) -> list[str]:
    """The error conditions of ``exc`` and of the Java exceptions that caused it, outermost first (empty if none
    says one)."""
    found = []
    if isinstance(exc, PySparkException) and exc.getCondition():
        found.append(exc.getCondition())
    if isinstance(exc, Py4JJavaError):
        from pyspark import SparkContext

        gateway, java, seen = SparkContext._gateway, exc.java_exception, 0
        while java is not None and gateway is not None and seen < 20:  # a few levels in practice: bounded anyway
            if is_instance_of(gateway, java, "org.apache.spark.SparkThrowable") and java.getCondition():
                found.append(java.getCondition())
            java, seen = java.getCause(), seen + 1
    return found
