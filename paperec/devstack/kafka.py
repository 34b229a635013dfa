"""Single-node Apache Kafka broker (KRaft, loopback) run from jars fetched off Maven Central.

The Apache download site is not reachable from our machines, so the broker's class path is the
runtime dependency closure of ``kafka_2.13`` (see ``pom.xml``), copied by Maven into
``<state_dir>/kafka/libs`` once and reused.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
import shutil
import subprocess
import uuid
from pathlib import Path

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


class Kafka(Service):
    name = "kafka"
    ready_timeout_s = 90.0
    keep_on_wipe = ("libs",)  # the jar cache: 45 MB from Maven Central

    @property
    def libs_dir(self) -> Path:
        return self.root / "libs"

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
        return f"{self.host}:{self.settings.kafka_port} (controller :{self.settings.kafka_controller_port})"

    def ports(self) -> list[Port]:
        s, h = self.settings, self.host
        return [
            Port(h, s.kafka_port, "Kafka broker listener", "kafka_bootstrap", f"{h}:{{port}}"),
            Port(h, s.kafka_controller_port, "Kafka KRaft controller listener", "kafka_controller_port"),
        ]

    def log_files(self) -> list[Path]:
        return [self.stdout_log, self.log_dir / "server.log"]

    # ------------------------------------------------------------------ prepare
    def prepare(self) -> None:
        java = require_java()
        self.fetch_jars()
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
        staging = self.root / "libs.partial"
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
        self.root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True)
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
        self.server_properties.write_text(
            render_server_properties(
                host=self.host,
                port=self.settings.kafka_port,
                controller_port=self.settings.kafka_controller_port,
                log_dir=self.data_dir,
                max_message_bytes=self.settings.max_message_bytes + MESSAGE_HEADROOM_BYTES,
            )
        )
        (self.config_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def format_storage(self, java: str) -> None:
        """Format the KRaft log dir once (meta.properties marks it formatted)."""
        if (self.data_dir / "meta.properties").is_file():
            return
        cluster_id = random_cluster_id()
        log.info("kafka: formatting storage %s (cluster id %s)", self.data_dir, cluster_id)
        cmd = [
            java,
            *self._java_args(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.server_properties),
        ]
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            raise DevstackError(
                f"kafka: formatting storage failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
            )

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
        """A real metadata round trip, and the broker registered and unfenced."""
        if not tcp_accepts(self.host, self.settings.kafka_port):
            return False
        from base import kafka as kafka_clients  # deferred: keeps `devstack --help` fast

        with quiet_loggers("kafka"):
            try:
                admin = kafka_clients.admin(
                    self.settings,
                    # this dev broker's own listener, whatever else the bootstrap list names
                    bootstrap_servers=f"{self.host}:{self.settings.kafka_port}",
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
        return any(not b.get("is_fenced", False) for b in brokers)


def render_server_properties(
    *, host: str, port: int, controller_port: int, log_dir: Path, max_message_bytes: int
) -> str:
    return f"""\
# Written by `paperec devstack up` on every start; edit the settings, not this file.
# Single-node KRaft: this process is both broker and (sole) controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={log_dir}

# One broker: internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
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
