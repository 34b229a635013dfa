#!/bin/sh
# Entry point of the `kafka` service in docker-compose.yml (apache/kafka image): the broker with
# SCRAM users created when its storage is formatted (docs/security.md, "Kafka").
#
# The image's own entry point (/etc/kafka/docker/run) formats the storage itself, from its
# KAFKA_* variables, and has no way to pass `--add-scram`; so this script does the same with the
# distribution's own tools, as the documentation of KRaft SCRAM describes:
#   1. the broker config: deploy/kafka/server.properties (no secret) plus the JAAS lines with the
#      admin's and the controller's passwords, into a copy only this user can read;
#   2. `kafka-storage.sh format --add-scram ...` for every principal, once: `--ignore-formatted`
#      leaves a formatted volume (its cluster id and users) alone, so a password changed in .env
#      later does not change a user (rotate with `kafka-configs.sh --alter --add-config
#      'SCRAM-SHA-512=[password=...]' --entity-type users --entity-name <user>` as the admin);
#   3. the broker itself.
# Passwords come from the environment (docker-compose.yml: ${...} from .env), never from a file
# in the repository.
set -eu
umask 077

KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
here=$(dirname "$0")
conf_dir=${PAPEREC_KAFKA_CONF_DIR:-$KAFKA_HOME/config/paperec}
mkdir -p "$conf_dir"

# A password goes inside a JAAS string ("...") and inside --add-scram's [name=..,password=..]:
# URL-safe characters only (python3 -c 'import secrets; print(secrets.token_urlsafe(32))').
require() {
    eval "value=\${$1:-}"
    case "$value" in
        "" | *[!A-Za-z0-9_-]*)
            echo "kafka: set $1 (at least 16 of A-Z a-z 0-9 - _)" >&2
            exit 1
            ;;
    esac
    if [ "${#value}" -lt 16 ]; then
        echo "kafka: $1 is shorter than 16 characters" >&2
        exit 1
    fi
}
for var in PAPEREC_KAFKA_ADMIN_PASSWORD PAPEREC_KAFKA_CONTROLLER_PASSWORD PAPEREC_KAFKA_SERVING_PASSWORD \
    PAPEREC_KAFKA_STREAMS_PASSWORD PAPEREC_KAFKA_LEARNER_PASSWORD PAPEREC_KAFKA_FEEDBACK_PASSWORD \
    PAPEREC_KAFKA_REPLAY_PASSWORD PAPEREC_KAFKA_ROLLOUT_PASSWORD; do
    require "$var"
done

scram_login() {
    printf 'org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";' "$1" "$2"
}

# 1. The broker's config: the committed file plus its own logins.
conf=$conf_dir/server.properties
{
    cat "$here/server.properties"
    echo
    echo "# --- appended by deploy/kafka/start.sh from the environment"
    echo "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$(scram_login paperec-admin "$PAPEREC_KAFKA_ADMIN_PASSWORD")"
    printf 'listener.name.controller.plain.sasl.jaas.config=%s\n' \
        "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"paperec-controller\" password=\"$PAPEREC_KAFKA_CONTROLLER_PASSWORD\" user_paperec-controller=\"$PAPEREC_KAFKA_CONTROLLER_PASSWORD\";"
} >"$conf"

# The health check's client config (docker-compose.yml): the admin, who may describe the cluster.
{
    echo "security.protocol=SASL_PLAINTEXT"
    echo "sasl.mechanism=SCRAM-SHA-512"
    echo "sasl.jaas.config=$(scram_login paperec-admin "$PAPEREC_KAFKA_ADMIN_PASSWORD")"
} >"$conf_dir/admin-client.properties"

# 2. Format once, with one SCRAM user per principal (names as in docker-compose.yml and the
# settings' defaults, base/settings.py kafka_*_principal).
scram() {
    printf 'SCRAM-SHA-512=[name=%s,password=%s]' "$1" "$2"
}
"$KAFKA_HOME/bin/kafka-storage.sh" format --ignore-formatted \
    --cluster-id "${CLUSTER_ID:-$("$KAFKA_HOME/bin/kafka-storage.sh" random-uuid)}" \
    --config "$conf" \
    --add-scram "$(scram paperec-admin "$PAPEREC_KAFKA_ADMIN_PASSWORD")" \
    --add-scram "$(scram paperec-serving "$PAPEREC_KAFKA_SERVING_PASSWORD")" \
    --add-scram "$(scram paperec-streams "$PAPEREC_KAFKA_STREAMS_PASSWORD")" \
    --add-scram "$(scram paperec-learner "$PAPEREC_KAFKA_LEARNER_PASSWORD")" \
    --add-scram "$(scram paperec-feedback "$PAPEREC_KAFKA_FEEDBACK_PASSWORD")" \
    --add-scram "$(scram paperec-replay "$PAPEREC_KAFKA_REPLAY_PASSWORD")" \
    --add-scram "$(scram paperec-rollout "$PAPEREC_KAFKA_ROLLOUT_PASSWORD")"

# 3. The broker, in this process (signals from `docker stop` reach it).
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$conf"
