# Fruits! image: Python 3.11 + OpenJDK 17 + the project (editable, at /opt/fruits) + Delta's jars in the Ivy cache.
#
# One image for every role (see docker-compose.yml):
#   driver:  fruits stream | refit-pca | status ...           (the entrypoint)
#   cluster: $SPARK_HOME/bin/spark-class org.apache.spark.deploy.master.Master / ...worker.Worker
# Executors run the pandas UDF with this image's Python, TensorFlow and `fruits` package, so workers use it too.
# Every process runs as the unprivileged user `fruits` (uid 10001), never as root.
#
#   docker build -t fruits .
#   docker run --rm -v fruits-home:/data/fruits-home fruits status --home /data/fruits-home

# --- The S3 server of docker-compose.yml (service `s3`): SeaweedFS, built from the Go module proxy as .ci/build-weed
# does (`go install ...@version` is refused: the module has replace directives). `docker build --target seaweedfs`.
FROM golang:1.26-bookworm AS seaweedfs-build
ARG WEED_VERSION=v0.0.0-20261109003541-7506e5f91cd6
RUN go mod download github.com/seaweedfs/seaweedfs@${WEED_VERSION} \
    && cp -r "$(go env GOMODCACHE)/github.com/seaweedfs/seaweedfs@${WEED_VERSION}" /src && chmod -R u+w /src \
    && cd /src && CGO_ENABLED=0 go build -o /weed ./weed

FROM debian:bookworm-slim AS seaweedfs
COPY --from=seaweedfs-build /weed /usr/local/bin/weed
RUN useradd --uid 10002 --create-home --shell /usr/sbin/nologin seaweed && mkdir /data && chown seaweed /data
USER seaweed
WORKDIR /data
CMD ["weed", "server", "-dir=/data", "-s3"]

# --- The Fruits! image (the default target).
FROM python:3.11-slim-bookworm

# procps: Spark's launch scripts call `ps`. tini: PID 1 that reaps the processes Spark forks and forwards SIGTERM.
# /opt/java: a JAVA_HOME that does not depend on the CPU architecture (java-17-openjdk-amd64, -arm64, ...).
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini libopenblas0-pthread liblapack3 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java \
    && /opt/java/bin/java -version

# SPARK_HOME: the pip-installed pyspark package is a complete Spark distribution (bin/spark-class, jars/); /opt/spark
# is a link to it, made below, so the path does not depend on the Python version.
# KERAS_HOME: Keras' ImageNet download cache (--weights imagenet); mount a volume there to keep it across containers.
ENV JAVA_HOME=/opt/java \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python \
    SPARK_HOME=/opt/spark \
    SPARK_CONF_DIR=/home/fruits/spark-conf \
    KERAS_HOME=/home/fruits/.keras

# The unprivileged user every role runs as; its home holds the Ivy and Keras caches and Spark's generated settings.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin fruits

WORKDIR /opt/fruits

# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself. Editable on purpose: fruits/config.py reads conf/fruits.toml next to the source tree
# (Path(__file__).resolve().parents[1] / "conf"), which a regular install into site-packages would not ship.
# .dockerignore keeps .env, keys and credentials out of the context (tests/test_compose.py); the build fails if one
# got in anyway (a .dockerignore edited by hand), rather than bake it into a layer that is shipped.
COPY . .
RUN leaked="$(find . \( -name '.env' -o -name '.env.*' -o -name '*.env' -o -name '*.pem' -o -name '*.key' \
        -o -name 'id_rsa*' -o -name 'id_ed25519*' -o -name 'credentials' -o -name '*.p12' -o -name '*.jks' \) -print)" \
    && if [ -n "$leaked" ]; then echo "secret files in the build context: $leaked" >&2; exit 1; fi \
    && pip install --no-deps -e . \
    && ln -s "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" "$SPARK_HOME" \
    && test -x "$SPARK_HOME/bin/spark-class" \
    && test -f conf/fruits.toml \
    && fruits --help >/dev/null

# The lakehouse home used by docker-compose.yml (a volume, which starts with this folder's owner); any path or
# Hadoop URI works with --home.
ENV FRUITS_HOME=/data/fruits-home
RUN mkdir -p /data/fruits-home /home/fruits/.keras /home/fruits/spark-conf \
    && chown -R fruits:fruits /data /home/fruits

USER fruits

# Resolve Delta's jars, and hadoop-aws with its AWS SDK bundle for s3a:// homes, now (Maven Central through Ivy, into
# ~fruits/.ivy2*), so containers start without network.
RUN cd /tmp && python -m fruits.spark.session warm && python -m fruits.spark.session warm --s3 \
    && rm -rf /tmp/spark-* /tmp/blockmgr-* /tmp/spark-warehouse

WORKDIR /data

# deploy/docker-entrypoint.sh writes Spark's authentication settings from SPARK_AUTH_SECRET, then runs the command.
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/fruits/deploy/docker-entrypoint.sh", "fruits"]
CMD ["--help"]
