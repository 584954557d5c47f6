#!/bin/sh
# Container entrypoint of every role (master, workers, stream, refit): writes Spark's RPC authentication settings,
# then runs the given command ("fruits ...", or spark-class for the master and workers).
#
# SPARK_AUTH_SECRET (environment): the shared secret of the standalone cluster. When it is set, every Spark process
# of the container (master, worker, driver) reads `spark.authenticate true` and the secret from
# $SPARK_CONF_DIR/spark-defaults.conf, written here readable by this user only; the secret never appears on a command
# line. Executors get it from their worker (environment). Unset: nothing is written (local commands: status, identify).
set -eu
if [ -n "${SPARK_AUTH_SECRET:-}" ]; then
    conf_dir="${SPARK_CONF_DIR:?SPARK_CONF_DIR must be set when SPARK_AUTH_SECRET is}"
    umask 077
    mkdir -p "$conf_dir"
    {
        echo "spark.authenticate true"
        echo "spark.authenticate.secret ${SPARK_AUTH_SECRET}"
        # AES encryption of RPC and block transfers (on in docker-compose.yml), of local disk (opt-in): see
        # docs/deployment.md (Security).
        [ -n "${SPARK_NETWORK_CRYPTO:-}" ] && echo "spark.network.crypto.enabled ${SPARK_NETWORK_CRYPTO}"
        [ -n "${SPARK_IO_ENCRYPTION:-}" ] && echo "spark.io.encryption.enabled ${SPARK_IO_ENCRYPTION}"
        true
    } > "$conf_dir/spark-defaults.conf"
fi
exec "$@"
