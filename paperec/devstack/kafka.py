"""Apache Kafka on loopback (KRaft), run from jars fetched off Maven Central: one node, or a
replicated cluster of ``kafka_brokers`` nodes (``paperec devstack up --brokers 3``).

Every node is a combined broker and controller; N nodes form an N-voter quorum. Node 1 keeps the
single broker's layout (``<state_dir>/kafka/``: jars, credentials, data, logs, config); node i > 1
has its own ``<state_dir>/kafka-<i>/`` (data, logs, config, PID file) and listens on the
configured ports + 2(i-1) (19092/19093, 19094/19095, 19096/19097). All nodes are formatted with
one cluster id and the same SCRAM users. With 3 nodes, topics default to replication factor 3
and ``min.insync.replicas=2`` (so are the internal offsets and transaction topics): with the
producers' ``acks=all`` (base/kafka.py) one node may die without losing an acknowledged record.

The Apache download site is not reachable from our machines, so the broker's class path is the
runtime dependency closure of ``kafka_2.13`` (see ``pom.xml``), copied by Maven into
``<state_dir>/kafka/libs`` once and reused.

With ``kafka_security_protocol=SASL_PLAINTEXT`` the broker is secured (docs/security.md, "Kafka"):
its client listener takes SASL/SCRAM-SHA-512 only, one SCRAM user per service role
(:data:`base.kafka_acls.ROLES`, named by the settings) is created when the storage is formatted
(``kafka-storage format --add-scram``, passwords generated then and kept in
``<state_dir>/kafka/credentials/<role>.env``, mode 0600), Kafka's ``StandardAuthorizer`` denies
whatever no ACL allows, and the ACLs of :func:`base.kafka_acls.acl_plan` are created with the
admin client once the broker answers. The controller listener (loopback) takes
SASL/PLAIN with a controller user of its own: KRaft cannot use SCRAM there (the SCRAM users live
in the metadata log the controller serves), and a PLAINTEXT controller listener would have to
make the anonymous user a super user.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from base.kafka_acls import ADMIN, ROLES, AclEntry, AclError, acl_plan, principal
from base.kafka_acls import apply_acls as _apply_acls
from base.settings import ENV_PREFIX, Settings
from paperec.devstack.process import DevstackError, Port, Service, quiet_loggers, tcp_accepts

log = logging.getLogger(__name__)

POM = Path(__file__).with_name("pom.xml")
# Broker limit above the largest topic-level message: a record batch adds headers and overhead.
MESSAGE_HEADROOM_BYTES = 1024 * 1024
JVM_OPTS = [
    "-Xms512m",
    "-Xmx512m",  # ample for a dev broker; leaves the 2-core CI machine room for the rest
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]
MIN_JAVA = 17  # Kafka 4.x

# ---------------------------------------------------------------- security (SASL_PLAINTEXT)
PLAINTEXT, SASL_PLAINTEXT = "PLAINTEXT", "SASL_PLAINTEXT"
SCRAM_MECHANISM = "SCRAM-SHA-512"
CONTROLLER_USER = "paperec-controller"  # SASL/PLAIN on the loopback controller listener only


def username(role: str, settings: Settings | None = None) -> str:
    """The Kafka principal (``User:<name>``) of a service role: ``settings``' name for it (the
    defaults' when None)."""
    return principal(settings or Settings(), role)


def apply_acls(admin_settings: Settings, plan: list[AclEntry], timeout_s: float = 15.0) -> int:
    """:func:`base.kafka_acls.apply_acls`, failures as DevstackError."""
    try:
        return _apply_acls(admin_settings, plan, timeout_s)
    except AclError as exc:
        raise DevstackError(str(exc)) from exc


def env_file_lines(role: str, password: str, settings: Settings | None = None) -> Iterator[str]:
    """A service's credentials as PAPEREC_* lines (``set -a; . <file>``, or a compose env_file)."""
    yield f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={SASL_PLAINTEXT}"
    yield f"{ENV_PREFIX}KAFKA_SASL_MECHANISM={SCRAM_MECHANISM}"
    yield f"{ENV_PREFIX}KAFKA_USERNAME={username(role, settings)}"
    yield f"{ENV_PREFIX}KAFKA_PASSWORD={password}"


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            out[name.strip()] = value
    return out


def write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read (created so, never world-readable for a moment)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


LOG4J2_PROPERTIES = """\
# Written by `paperec devstack up`. A .properties config: YAML would need jackson-dataformat-yaml
# on the log4j side and XML is noisier. Broker chatter at INFO goes to server.log only.
status = warn
name = paperec-kafka

appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 50MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 2

rootLogger.level = INFO
rootLogger.appenderRef.server.ref = SERVER

# The same quiet-downs as the release's log4j2.yaml.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of a cluster of ``brokers`` nodes: up to 3
    replicas, one of which may be lost while writes go on."""
    rf = min(brokers, 3)
    return rf, max(1, rf - 1)


def recorded_brokers(settings: Settings) -> int:
    """The node count the dev cluster was formatted with (0: not formatted by this version)."""
    try:
        return len(Kafka(settings).quorum_file.read_text().strip().split(","))
    except OSError:
        return 0


def kafka_nodes(settings: Settings, brokers: int | None = None) -> list[Kafka]:
    """Nodes 1..``brokers`` (default: the settings' ``kafka_brokers``)."""
    count = settings.kafka_brokers if brokers is None else brokers
    if count < 1:
        raise DevstackError(f"kafka: {count} brokers ({ENV_PREFIX}KAFKA_BROKERS); at least 1")
    return [Kafka(settings, node_id) for node_id in range(1, count + 1)]


class Kafka(Service):
    """One KRaft node (broker + controller) of the dev cluster; node 1 is the whole single-node
    stack, and owns what the nodes share (jars, credentials, cluster id)."""

    ready_timeout_s = 90.0

    def __init__(self, settings: Settings, node_id: int = 1) -> None:
        self.node_id = node_id
        self.name = "kafka" if node_id == 1 else f"kafka-{node_id}"
        # Only node 1's root holds the jar cache.
        self.keep_on_wipe = ("libs",) if node_id == 1 else ()  # the jar cache: 45 MB from Maven Central
        super().__init__(settings)
        self.cluster_root = settings.state_path / "kafka"

    @property
    def brokers(self) -> int:
        return self.settings.kafka_brokers

    @property
    def replication(self) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) of this cluster's topics."""
        return replication(self.brokers)

    @property
    def port(self) -> int:
        return self.settings.kafka_port + 2 * (self.node_id - 1)

    @property
    def controller_port(self) -> int:
        return self.settings.kafka_controller_port + 2 * (self.node_id - 1)

    @property
    def quorum_voters(self) -> str:
        """``controller.quorum.voters``: every node, ``id@host:controller_port``."""
        return ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in kafka_nodes(self.settings))

    @property
    def quorum_file(self) -> Path:
        """The voters node 1 was formatted with (``down``/``status`` find the other nodes by it)."""
        return self.cluster_root / "quorum.voters"

    @property
    def bootstrap(self) -> str:
        """Every node's listener: a client bootstrapping from it survives any one node down."""
        return ",".join(f"{self.host}:{n.port}" for n in kafka_nodes(self.settings))

    @property
    def libs_dir(self) -> Path:
        return self.cluster_root / "libs"

    @property
    def libs_marker(self) -> Path:
        # Hidden, so the class path glob `libs/*` (jars only) never sees it.
        return self.libs_dir / ".complete"

    @property
    def server_properties(self) -> Path:
        return self.config_dir / "server.properties"

    @property
    def marker(self) -> str:
        return str(self.server_properties)

    @property
    def host(self) -> str:
        return self.settings.kafka_host

    @property
    def address(self) -> str:
        secured = f" {SASL_PLAINTEXT}" if self.secured else ""
        return f"{self.host}:{self.port}{secured} (controller :{self.controller_port})"

    # ------------------------------------------------------------------ security
    @property
    def secured(self) -> bool:
        """SASL_PLAINTEXT listener, SCRAM users, ACLs (else PLAINTEXT: local development only)."""
        protocol = self.settings.kafka_security_protocol
        if protocol not in (PLAINTEXT, SASL_PLAINTEXT):
            raise DevstackError(
                f"kafka: the dev stack's broker offers {PLAINTEXT} or {SASL_PLAINTEXT}, not {protocol} "
                f"({ENV_PREFIX}KAFKA_SECURITY_PROTOCOL): TLS needs certificates of your own broker "
                "(docs/security.md)."
            )
        return protocol == SASL_PLAINTEXT

    @property
    def credentials_dir(self) -> Path:
        return self.cluster_root / "credentials"  # one set of SCRAM users for every node

    def credentials_file(self, role: str) -> Path:
        return self.credentials_dir / f"{role}.env"

    def credentials(self, role: str) -> dict[str, str]:
        """``role``'s PAPEREC_KAFKA_* variables (security protocol, mechanism, username, password):
        what that service's process gets in its environment."""
        try:
            return read_env_file(self.credentials_file(role))
        except OSError:
            raise DevstackError(
                f"kafka: no credentials for {role!r} in {self.credentials_dir} (the broker was not "
                "formatted with SASL users; `paperec devstack down --only kafka --wipe`, then `up`)"
            ) from None

    def client_settings(self, role: str) -> Settings:
        """``self.settings`` as the principal of ``role`` (secured broker only)."""
        env = self.credentials(role)
        return self.settings.replace(
            kafka_security_protocol=env[f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL"],
            kafka_sasl_mechanism=env[f"{ENV_PREFIX}KAFKA_SASL_MECHANISM"],
            kafka_username=env[f"{ENV_PREFIX}KAFKA_USERNAME"],
            kafka_password=env[f"{ENV_PREFIX}KAFKA_PASSWORD"],
            kafka_password_file="",  # the credentials file's password, whatever the environment says
        )

    def ensure_credentials(self) -> None:
        """Generate every role's password (and the controller's) before the storage is formatted;
        they never change afterwards (the SCRAM users are in the metadata log)."""
        formatted = (self.data_dir / "meta.properties").is_file()
        if self.credentials_dir.is_dir():
            return
        if formatted:
            raise DevstackError(
                f"kafka: {self.data_dir} was formatted without SASL users; to secure the dev broker "
                "wipe it first: `paperec devstack down --only kafka --wipe`, then `up` again"
            )
        for role in ROLES:
            password = secrets.token_hex(24)  # hex: safe inside --add-scram's [name=..,password=..]
            lines = env_file_lines(role, password, self.settings)  # the settings' principal names
            write_secret(self.credentials_file(role), "\n".join(lines) + "\n")
        write_secret(self.credentials_dir / "controller.password", secrets.token_hex(24) + "\n")

    def _controller_password(self) -> str:
        return (self.credentials_dir / "controller.password").read_text().strip()

    def scram_args(self) -> list[str]:
        """``kafka-storage format`` arguments creating every role's SCRAM user."""
        args = []
        for role in ROLES:
            env = self.credentials(role)
            name, password = env[f"{ENV_PREFIX}KAFKA_USERNAME"], env[f"{ENV_PREFIX}KAFKA_PASSWORD"]
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        return args

    def apply_acls(self, settings: Settings | None = None) -> int:
        """Create the ACLs of ``settings``' topic prefix (default: the dev stack's own)."""
        return apply_acls(self.client_settings(ADMIN), acl_plan(settings or self.settings))

    def ports(self) -> list[Port]:
        h = self.host
        node = (
            ""
            if self.node_id == 1
            else f" of node {self.node_id} (configured port + {2 * (self.node_id - 1)})"
        )
        return [
            Port(h, self.port, f"Kafka broker listener{node}", "kafka_bootstrap", f"{h}:{{port}}"),
            Port(h, self.controller_port, f"Kafka KRaft controller listener{node}", "kafka_controller_port"),
        ]

    def log_files(self) -> list[Path]:
        return [self.stdout_log, self.log_dir / "server.log"]

    # ------------------------------------------------------------------ prepare
    def prepare(self) -> None:
        java = require_java()
        self.fetch_jars()
        if self.secured:
            self.ensure_credentials()
        self.write_config()
        self.format_storage(java)

    def fetch_jars(self) -> None:
        """Copy the broker's runtime jars into libs/ once; refetch when pom.xml changes."""
        digest = hashlib.sha256(POM.read_bytes()).hexdigest()
        if self.libs_marker.is_file() and self.libs_marker.read_text().strip() == digest:
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DevstackError(
                "kafka: `mvn` (Apache Maven >= 3.6.3) is needed once to fetch the broker's jars from "
                "Maven Central; install it (Debian: apt-get install -y maven) and rerun."
            )
        log.info("kafka: fetching broker jars from Maven Central into %s (one-time)", self.libs_dir)
        # Into a fresh folder, swapped in at the end: an interrupted copy or a version bump must
        # not leave a mix of jars on the class path.
        staging = self.cluster_root / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        self.cluster_root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(cmd, cwd=self.cluster_root, capture_output=True, text=True)
        if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            output = (done.stdout + done.stderr).strip().splitlines()[-30:]
            raise DevstackError(
                f"kafka: Maven could not fetch the broker jars (exit {done.returncode}):\n"
                + "\n".join("  " + line for line in output)
            )
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        self.libs_marker.write_text(digest + "\n")

    def write_config(self) -> None:
        """(Re)write server.properties and the log4j2 config from the current settings."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = render_server_properties(
            host=self.host,
            port=self.port,
            controller_port=self.controller_port,
            log_dir=self.data_dir,
            max_message_bytes=self.settings.max_message_bytes + MESSAGE_HEADROOM_BYTES,
            node_id=self.node_id,
            quorum_voters=self.quorum_voters,
            brokers=self.brokers,
        )
        if self.secured:
            admin = self.credentials(ADMIN)
            text = secure_server_properties(
                text,
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                admin_user=admin[f"{ENV_PREFIX}KAFKA_USERNAME"],
                admin_password=admin[f"{ENV_PREFIX}KAFKA_PASSWORD"],
                controller_password=self._controller_password(),
            )
        write_secret(self.server_properties, text)  # holds the broker's own passwords when secured
        (self.config_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def check_quorum(self) -> None:
        """A formatted cluster keeps its voters: a 1-node metadata log cannot join a 3-node quorum
        (nor the reverse), so another node count needs a wipe."""
        if not (self.data_dir / "meta.properties").is_file():
            return
        try:
            formatted = self.quorum_file.read_text().strip()
        except OSError:  # formatted before the dev stack had clusters: one node
            formatted = f"1@{self.host}:{self.settings.kafka_controller_port}"
        if formatted != self.quorum_voters:
            raise DevstackError(
                f"{self.name}: the dev cluster was formatted with {len(formatted.split(','))} node(s) "
                f"({formatted}), now {self.brokers} are configured ({self.quorum_voters}): pass the same "
                f"--brokers, or wipe it first: `paperec devstack down --only kafka --wipe`"
            )

    def cluster_id(self) -> str:
        """The cluster id every node is formatted with (node 1 draws it; wiped with the data)."""
        path = self.cluster_root / "cluster.id"
        if self.node_id == 1 and not (self.data_dir / "meta.properties").is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(random_cluster_id() + "\n")
        try:
            return path.read_text().strip()
        except OSError:
            raise DevstackError(f"{self.name}: no {path}: node 1 must be prepared first") from None

    def format_storage(self, java: str) -> None:
        """Format the KRaft log dir once (meta.properties marks it formatted)."""
        self.check_quorum()
        if (self.data_dir / "meta.properties").is_file():
            return
        cluster_id = self.cluster_id()
        log.info("%s: formatting storage %s (cluster id %s)", self.name, self.data_dir, cluster_id)
        cmd = [
            java,
            *self._java_args(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.server_properties),
            # The SCRAM users, in the first metadata records. Their passwords are on this command
            # line for the second it runs (a local dev broker; a production one gets its users
            # from `kafka-configs --alter --add-config SCRAM-SHA-512=...` or the admin API).
            *(self.scram_args() if self.secured else []),
        ]
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            raise DevstackError(
                f"{self.name}: formatting storage failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        if self.node_id == 1:
            self.quorum_file.write_text(self.quorum_voters + "\n")

    # ------------------------------------------------------------------ run
    def _java_args(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={self.config_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            f"{self.libs_dir}/*",
        ]

    def command(self) -> list[str]:
        return [require_java(), *JVM_OPTS, *self._java_args(), "kafka.Kafka", str(self.server_properties)]

    def probe(self) -> bool:
        """A real metadata round trip, and this node registered and unfenced."""
        if not tcp_accepts(self.host, self.port):
            return False
        from base import kafka as kafka_clients  # deferred: keeps `devstack --help` fast

        try:
            settings = self.client_settings(ADMIN) if self.secured else self.settings
        except DevstackError:
            return False
        with quiet_loggers("kafka"):
            try:
                admin = kafka_clients.admin(
                    settings,
                    # this dev broker's own listener, whatever else the bootstrap list names
                    bootstrap_servers=f"{self.host}:{self.port}",
                    client_id="paperec-devstack-probe",
                    request_timeout_ms=5000,
                )
            except Exception:
                return False
            try:
                cluster = admin.describe_cluster()
            except Exception:
                return False
            finally:
                admin.close()
        brokers = cluster.get("brokers") or []
        return any(b.get("broker_id") == self.node_id and not b.get("is_fenced", False) for b in brokers)

    def wait_ready(self, pid: int) -> None:
        """Wait for the broker; a secured one then gets the services' ACLs (idempotent)."""
        super().wait_ready(pid)
        if self.secured and self.node_id == self.brokers:  # the last node: the quorum is complete
            count = self.apply_acls()
            log.info(
                "kafka: %d ACLs for topic prefix %r in place; each service's credentials: %s/<role>.env",
                count,
                self.settings.topic_prefix,
                self.credentials_dir,
            )


def render_server_properties(
    *,
    host: str,
    port: int,
    controller_port: int,
    log_dir: Path,
    max_message_bytes: int,
    node_id: int = 1,
    quorum_voters: str = "",
    brokers: int = 1,
) -> str:
    rf, min_isr = replication(brokers)
    return f"""\
# Written by `paperec devstack up` on every start; edit the settings, not this file.
# KRaft, {brokers} node(s): this process is both a broker and a controller (quorum voter).
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={quorum_voters or f"1@{host}:{controller_port}"}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={log_dir}

# Replicas of topics and internal topics: up to 3, one of which may be lost while acks=all
# writes go on (min.insync.replicas = replicas - 1); a single node has one replica of each.
default.replication.factor={rf}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={rf}
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={min_isr}
# A replica that missed acknowledged writes never becomes leader (the default, stated).
unclean.leader.election.enable=false
# Fewer internal partitions than the default 50: the first consumer group / transaction then
# waits for 8 partitions to be created on the 2-core CI machine, not 50.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8

# Topics are provisioned explicitly (`paperec topics create`) with their partition counts and
# retention; a typo'd topic name must fail, not silently create a 1-partition topic.
auto.create.topics.enable=false
num.partitions=1
# Tests and the demo start consumer groups often: do not wait 3 s for more members.
group.initial.rebalance.delay.ms=0
# Actor snapshots are large; topic-level max.message.bytes is set by `paperec topics create`.
message.max.bytes={max_message_bytes}
replica.fetch.max.bytes={max_message_bytes}
"""


def secure_server_properties(
    plain: str,
    *,
    host: str,
    port: int,
    controller_port: int,
    admin_user: str,
    admin_password: str,
    controller_password: str,
) -> str:
    """``plain`` with its client listener on SASL_PLAINTEXT (SCRAM-SHA-512), the controller
    listener on SASL/PLAIN, and the authorizer denying what no ACL allows."""
    listeners = {
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}": (
            f"listeners={SASL_PLAINTEXT}://{host}:{port},CONTROLLER://{host}:{controller_port}"
        ),
        f"advertised.listeners=PLAINTEXT://{host}:{port}": f"advertised.listeners={SASL_PLAINTEXT}://{host}:{port}",
        "inter.broker.listener.name=PLAINTEXT": f"inter.broker.listener.name={SASL_PLAINTEXT}",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT": (
            f"listener.security.protocol.map=CONTROLLER:{SASL_PLAINTEXT},{SASL_PLAINTEXT}:{SASL_PLAINTEXT}"
        ),
    }
    for old, new in listeners.items():
        if old not in plain:
            raise AssertionError(f"server.properties template changed: {old!r} not found")
        plain = plain.replace(old, new)
    scram_jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{admin_user}" password="{admin_password}";'
    )
    plain_jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{CONTROLLER_USER}" password="{controller_password}" '
        f'user_{CONTROLLER_USER}="{controller_password}";'
    )
    return (
        plain
        + f"""
# --- Security (`paperec devstack up` with PAPEREC_KAFKA_SECURITY_PROTOCOL={SASL_PLAINTEXT}).
# Clients: SASL/{SCRAM_MECHANISM}, users created at format time. This broker talks to itself as
# the admin principal.
sasl.enabled.mechanisms={SCRAM_MECHANISM}
sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram_jaas}
# Controller listener (loopback): SASL/PLAIN with its own user (KRaft cannot use SCRAM there).
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain_jaas}
# Whatever no ACL allows is denied; the admin and the controller are super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{admin_user};User:{CONTROLLER_USER}
"""
    )


def random_cluster_id() -> str:
    """Like `kafka-storage random-uuid`: url-safe base64 of 16 random bytes, no padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like a CLI flag
            return cid


@functools.cache  # `java -version` once per process
def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise DevstackError(
            f"kafka: `java` (Java {MIN_JAVA}+) not found on PATH; install it "
            "(Debian: apt-get install -y openjdk-17-jre-headless) and rerun."
        )
    done = subprocess.run([java, "-version"], capture_output=True, text=True)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_392" style
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise DevstackError(
                f"kafka: Kafka 4 needs Java {MIN_JAVA}+, but {java} is Java {major}; "
                "install openjdk-17-jre-headless (or newer) and put it first on PATH."
            )
    return java
