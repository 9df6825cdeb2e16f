"""Configuration: TOML parsed once into frozen, validated models; every key has a default."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# Re-exported: rules and sinks read the valid leak kinds from the config module.
from soakd.detection.kinds import LEAK_KINDS as LEAK_KINDS
from soakd.errors import ConfigError
from soakd.redact import redact_url
from soakd.units import DURATION_JSON_SCHEMA, SIZE_JSON_SCHEMA, parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_JSON_SCHEMA)]
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(SIZE_JSON_SCHEMA)]
JSONScalar = str | int | float | bool


def _must_be_positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


class _Model(BaseModel):
    """Base of every section: frozen, unknown keys rejected, aliases accepted."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class HttpTarget(_Model):
    """An HTTP workload against a URL (external process mode)."""

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    body: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    query_param: str | None = None  # when set, each query is sent as ?<query_param>=<query>

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value


class TargetConfig(_Model):
    """``[target]``: what is soaked: a factory and method, a scenario, or an HTTP endpoint."""

    factory: str | None = "soakd.reference:ReferenceAggregator"
    method: str = "process_query"
    scenario: str | None = None
    python_path: tuple[str, ...] = ()
    options: dict[str, Any] = Field(default_factory=dict)
    http: HttpTarget | None = None
    # The service's own interpreter (its virtualenv's bin/python) or virtualenv directory;
    # unset: soakd's. Checked (exists, runs, Python 3.10+) by soakd.supervisor.interpreter.
    python: str | None = None
    venv: str | None = None

    @model_validator(mode="after")
    def _one_interpreter(self) -> TargetConfig:
        if self.python is not None and self.venv is not None:
            raise ValueError(
                "set either 'python' (the interpreter) or 'venv' (its virtualenv), not both"
            )
        for key in ("python", "venv"):
            if getattr(self, key) == "":
                raise ValueError(f"'{key}' is empty; give a path or leave it out")
        return self

    @field_validator("factory", "scenario")
    @classmethod
    def _module_attr(cls, value: str | None) -> str | None:
        if value is not None:
            module, sep, attr = value.partition(":")
            if not sep or not module or not attr:
                raise ValueError(f"expected 'module:attr' such as 'pkg.mod:Factory', got {value!r}")
        return value

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if not value.isidentifier():
            raise ValueError(f"expected a method name such as 'process_query', got {value!r}")
        return value

    @property
    def name(self) -> str:
        """The target as the summary, events and metrics name it (credentials redacted)."""
        if self.http is not None:
            return redact_url(self.http.url)
        return self.scenario or self.factory or "?"


# Measured: below ~64 MiB of address space the worker cannot even start its threads.
_MIN_WORKER_MEMORY = 64 * 2**20


def _hard_address_limit() -> int | None:
    """This process's hard RLIMIT_AS (a child cannot get more), None when unlimited."""
    try:
        import resource
    except ImportError:
        return None
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    return None if hard == resource.RLIM_INFINITY else hard


class RunConfig(_Model):
    """``[run]``: how long the soak lasts and the limits put on the worker."""

    duration: Duration = 600.0
    stop_timeout: Duration = 30.0  # in-flight iterations get this long to finish at stop
    start_timeout: Duration = 60.0  # worker import + factory must be ready within this
    worker_log_limit: Size = 1024 * 1024  # bytes of target stdout/stderr kept in worker.log
    worker_memory_limit: Size | None = None  # RLIMIT_AS on the worker (tests, hard caps)

    _positive = field_validator("duration", "start_timeout")(_must_be_positive)

    @field_validator("worker_memory_limit")
    @classmethod
    def _applicable(cls, value: int | None) -> int | None:
        """A limit ``setrlimit`` accepts and under which Python can start at all."""
        if value is None:
            return value
        if value < _MIN_WORKER_MEMORY:
            raise ValueError(
                f"{value} bytes is too small for the worker to start Python (its address "
                f"space alone needs more): use at least {_MIN_WORKER_MEMORY // 2**20}MiB"
            )
        hard = _hard_address_limit()
        if value >= 2**63 or (hard is not None and value > hard):
            most = "2**63 - 1 bytes" if hard is None else f"{hard} bytes (this box's hard limit)"
            raise ValueError(f"{value} bytes cannot be set as RLIMIT_AS: at most {most}")
        return value


class ThinkTime(_Model):
    """``[workload.think_time]``: the pause each user takes between iterations."""

    distribution: Literal["none", "constant", "uniform", "exponential"] = "exponential"
    mean: Duration = 0.05
    min: Duration = 0.0
    max: Duration = 1.0


class Stage(_Model):
    """One ``[[workload.stages]]`` step of a ramp: users or an arrival rate, held a while."""

    duration: Duration
    users: int | None = Field(default=None, ge=0, le=10_000)
    rate: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_of(self) -> Stage:
        if (self.users is None) == (self.rate is None):
            raise ValueError("a stage sets exactly one of 'users' or 'rate'")
        return self


class Query(_Model):
    """One workload query with its kind (reported per kind) and its weight in the mix."""

    text: str = Field(min_length=1)
    kind: str = "default"
    weight: float = Field(default=1.0, gt=0)


Matcher = dict[str, JSONScalar]
DEFAULT_MILESTONES: dict[str, Matcher] = {
    "first_status": {"type": "status"},
    "analysis_complete": {"type": "status", "stage": "analysis_complete"},
}


class WorkloadConfig(_Model):
    """``[workload]``: the load driven through the target (closed or open model)."""

    users: int = Field(default=4, ge=1, le=10_000)
    rate: float | None = Field(default=None, gt=0)  # set → open model at this arrival rate (per s)
    max_concurrency: int = Field(default=256, ge=1, le=100_000)
    think_time: ThinkTime = ThinkTime()
    stages: tuple[Stage, ...] = ()
    timeout: Duration = 30.0
    queries: tuple[Query, ...] = ()
    queries_file: str | None = None
    error_events: tuple[Matcher, ...] = ({"type": "error"},)
    milestones: dict[str, Matcher] = Field(default_factory=lambda: dict(DEFAULT_MILESTONES))
    interval: Duration = 10.0  # workload stats are reported per interval
    seed: int | None = None

    @field_validator("queries", mode="before")
    @classmethod
    def _queries(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [{"text": q} if isinstance(q, str) else q for q in value]
        return value

    _positive = field_validator("timeout", "interval")(_must_be_positive)


TracingMode = Literal["always", "on-suspicion", "off"]
ProfilerMode = Literal["sampled", "off"]


class SamplingConfig(_Model):
    """``[sampling]``: what is measured, how often, and when tracemalloc runs."""

    enabled: bool = True  # false: process samples only (the overhead baseline)
    process_interval: Duration = 1.0
    system_interval: Duration = 5.0
    heap_interval: Duration = 2.0
    types_interval: Duration = 30.0
    sites_interval: Duration = 10.0
    analysis_interval: Duration = 10.0
    checkpoint_interval: Duration = 30.0
    job_timeout: Duration = 20.0  # a sampling job that takes longer is abandoned and recorded
    # Allocation sites: the sampled profiler, always on; tracemalloc ("always": the exact mode)
    # takes over while it traces. "on-suspicion" applies only where the profiler is off or
    # unavailable (its C extension not built), as the fallback.
    profiler: ProfilerMode = "sampled"
    profiler_interval: Size = 64 * 1024  # mean bytes allocated between two samples
    # While a heap growth is suspected and no site explains it, sample this much more often
    # (a 1 KB/s leak gives a sample a minute at 64 KiB, one every 8 s here); 0: never.
    profiler_zoom_interval: Size = 8 * 1024
    tracemalloc: TracingMode = "on-suspicion"
    frames: int = Field(default=8, ge=1, le=100)
    max_sites: int = Field(default=50, ge=1, le=10_000)  # sites per heap sample sent over
    max_types: int = Field(default=50, ge=1, le=10_000)

    @field_validator("profiler_interval")
    @classmethod
    def _profiler_interval(cls, value: int) -> int:
        if not 4096 <= value <= 1024**3:
            raise ValueError(f"must be between 4KiB and 1GiB, got {value} bytes")
        return value

    @model_validator(mode="after")
    def _zoom_below_interval(self) -> SamplingConfig:
        zoom = self.profiler_zoom_interval
        if zoom and not 4096 <= zoom < self.profiler_interval:
            raise ValueError(
                f"profiler_zoom_interval ({zoom} bytes) must be 0 (off) or at least 4KiB and "
                f"below profiler_interval ({self.profiler_interval} bytes)"
            )
        return self

    @property
    def profiler_on(self) -> bool:
        """The sampled profiler is asked for (whether the target can run it is its answer)."""
        return self.enabled and self.profiler == "sampled"

    @property
    def fast_analysis_interval(self) -> float:
        """The analysis cadence while a verdict is near: twice the usual, no faster than heap
        samples arrive."""
        return min(self.analysis_interval, max(self.heap_interval, self.analysis_interval / 2))

    @field_validator(
        "process_interval",
        "system_interval",
        "heap_interval",
        "types_interval",
        "sites_interval",
        "analysis_interval",
        "checkpoint_interval",
        "job_timeout",
    )
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 0.05:
            raise ValueError(f"must be ≥ 50ms, got {value}s")
        return value


class DetectionConfig(_Model):
    """``[detection]``: when and how leaks are judged.

    Mapped to the detector's settings by ``DetectionParams.from_config``, which documents the
    values derived from these keys.
    """

    warmup: Duration = Field(default=60.0, description="Floor: nothing is judged before this.")
    warmup_max: Duration = Field(
        default=600.0, description="The automatic warm-up end is never later than this."
    )
    window: Duration = Field(
        default=1800.0, description="Trends are judged over the latest window after warm-up."
    )
    min_heap_slope: Size = Field(
        default=1024 * 1024,
        description="Bytes per hour: smaller Python heap growth is not worth reporting.",
    )
    min_native_slope: Size = Field(
        default=64 * 1024 * 1024,
        description="Bytes per hour of RSS growth beyond the Python heap's: allocator creep "
        "stays below this.",
    )
    native_window: Duration = Field(
        default=600.0,
        description="RSS-only growth must persist this long to be a native leak.",
    )
    min_count_slope: float = Field(
        default=20.0, gt=0, description="File descriptors, threads or tasks per hour."
    )
    min_object_slope: float = Field(
        default=600.0,
        gt=0,
        description="Live objects of one type per hour (churn is large).",
    )
    confidence: float = Field(
        default=0.99,
        gt=0.5,
        lt=1.0,
        description="1 − the significance level of the trend tests (shared by a window and its "
        "newest half and quarter).",
    )
    confirm_after: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Consecutive agreeing analyses, over a quarter of the shortest window, "
        "before a leak is confirmed (and as many disagreeing before it is cleared).",
    )
    on_leak: Literal["fail", "alert"] = Field(
        default="fail",
        description="fail: a confirmed leak is the run's verdict (exit 3); alert: leaks are "
        "reported and the run exits by its other verdicts.",
    )

    @model_validator(mode="after")
    def _order(self) -> DetectionConfig:
        if self.warmup_max < self.warmup:
            raise ValueError(f"warmup_max ({self.warmup_max}s) must be ≥ warmup ({self.warmup}s)")
        return self


class HealthConfig(_Model):
    """``[health]``: what a healthy target stays within; outside it the verdict is
    ``target_failed`` (exit 5), never ``pass``."""

    max_error_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Errors over all iterations of the run (1 %: the aggregator's own bar).",
    )
    max_stall: Duration = Field(
        default=60.0,
        gt=0,
        description="Longest time in which no iteration completes (a blocked event loop, a "
        "frozen worker).",
    )
    max_unjudged_growth: Size = Field(
        default=10_000_000,
        ge=0,
        description="When the detector could not judge (run too short, warm-up not over): "
        "RSS or heap growth from first to last sample above this is a leak (10 MB).",
    )


METRICS = (
    "rss_bytes",
    "heap_bytes",
    "fds",
    "threads",
    "tasks",
    "error_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "first_event_p99_ms",
    "throughput_drop",
    "system_memory_percent",
    "load_avg",
    "leak",
)
SIZE_METRICS = {"rss_bytes", "heap_bytes"}
DURATION_METRICS = {"latency_p50_ms", "latency_p99_ms", "first_event_p99_ms"}


class Rule(_Model):
    """One ``[[rules]]`` entry: a metric above or below a limit, held ``for`` a while."""

    metric: str
    above: float | None = None
    below: float | None = None
    window: Duration | None = None
    for_: Duration = Field(default=0.0, alias="for")
    grace: Duration | None = None  # default: the detection warm-up floor
    action: Literal["alert", "abort"] = "alert"
    kind: str | None = None  # for metric = "leak": only leaks of this kind
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _limits(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        metric = data.get("metric")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        out = dict(data)
        for key in ("above", "below"):
            if out.get(key) is not None:  # None: unset (as config.json dumps it)
                out[key] = _rule_limit(str(metric), key, out[key])
        if metric == "leak" and "above" not in out and "below" not in out:
            out["above"] = 0.0
        return out

    @model_validator(mode="after")
    def _one_limit(self) -> Rule:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"rule for {self.metric!r} sets exactly one of 'above' or 'below'")
        if self.kind is not None and self.kind not in LEAK_KINDS:
            raise ValueError(f"unknown leak kind {self.kind!r}; valid: {', '.join(LEAK_KINDS)}")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        op, limit = ("above", self.above) if self.above is not None else ("below", self.below)
        return f"{self.metric} {op} {limit:g}"


def _rule_limit(metric: str, key: str, value: object) -> float:
    if metric in SIZE_METRICS:
        return float(parse_size(value))
    if metric in DURATION_METRICS and isinstance(value, str):
        return parse_duration(value) * 1000.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} for {metric!r} must be a number, got {value!r}")
    return float(value)


class GuardConfig(_Model):
    """Built-in rules that protect the staging box (abort before the OOM killer acts)."""

    enabled: bool = True
    system_memory_percent: float = Field(default=90.0, gt=0, le=100)
    worker_rss: Size = 8 * 1024**3


class Webhook(_Model):
    """One alert webhook; its URL and headers may hold secrets and are never printed."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 5.0
    retries: int = Field(default=2, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    def __repr__(self) -> str:  # URLs and headers may carry secrets
        return "Webhook(<redacted>)"


class AlertsConfig(_Model):
    """``[alerts]``: where alerts go: webhooks and a command."""

    webhooks: tuple[Webhook, ...] = ()
    command: tuple[str, ...] | None = None  # run on each alert; the event JSON on stdin
    command_timeout: Duration = 10.0


class OutputConfig(_Model):
    """``[output]``: where run directories go, how many are kept, the console format."""

    runs_dir: str = "runs"
    retention: int = Field(default=50, ge=1)  # keep this many run directories
    # private: run directories 0700, files 0600; group: 0750 / 0640, to share with the group
    # on purpose. A stricter umask wins either way.
    mode: Literal["private", "group"] = "private"
    console: Literal["auto", "json", "pretty"] = "auto"


class MetricsConfig(_Model):
    """``[metrics]``: the Prometheus ``/metrics`` endpoint."""

    enabled: bool = False
    bind: str = "127.0.0.1:9464"

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {value!r}")
        return value


class OtelConfig(_Model):
    """``[otel]``: metrics and sampled iteration spans over OTLP (needs the ``otel`` extra).

    Precedence: a key set here wins; a key left unset falls back to the standard
    ``OTEL_EXPORTER_OTLP_*`` environment variables, then to the SDK's defaults."""

    enabled: bool = False
    # The collector's base URL (``/v1/traces`` and ``/v1/metrics`` are appended), as
    # OTEL_EXPORTER_OTLP_ENDPOINT; unset: that variable, else http://localhost:4318.
    endpoint: str | None = None
    protocol: Literal["http/protobuf"] = "http/protobuf"
    headers: dict[str, str] = Field(default_factory=dict)  # secrets: redacted in every copy
    service_name: str | None = None  # resource service.name; unset: the target's name
    resource: dict[str, JSONScalar] = Field(default_factory=dict)  # extra resource attributes
    # Head sampling: the fraction of iterations that become spans. 1 % keeps the worker's cost
    # under its measured noise (README, overhead) at any rate a single target sustains.
    sample_ratio: float = Field(default=0.01, ge=0.0, le=1.0)
    max_spans: int = Field(default=512, ge=1, le=100_000)  # buffered per workload interval
    export_interval: Duration = 10.0  # metrics push period
    timeout: Duration = 10.0  # one export request

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value

    @field_validator("export_interval", "timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        return _must_be_positive(value)

    def __repr__(self) -> str:  # headers may carry secrets
        return f"OtelConfig(enabled={self.enabled}, endpoint=<redacted>)"


class Config(_Model):
    """The whole configuration, one section per TOML table; cross-section checks here."""

    target: TargetConfig = TargetConfig()
    run: RunConfig = RunConfig()
    workload: WorkloadConfig = WorkloadConfig()
    sampling: SamplingConfig = SamplingConfig()
    detection: DetectionConfig = DetectionConfig()
    health: HealthConfig = HealthConfig()
    rules: tuple[Rule, ...] = ()
    guard: GuardConfig = GuardConfig()
    alerts: AlertsConfig = AlertsConfig()
    output: OutputConfig = OutputConfig()
    metrics: MetricsConfig = MetricsConfig()
    otel: OtelConfig = OtelConfig()
    source: str | None = Field(default=None, exclude=True)  # the file it came from
    base_dir: str = Field(default=".", exclude=True)  # relative paths resolve against this

    @model_validator(mode="after")
    def _cross(self) -> Config:
        for i, rule in enumerate(self.rules):
            if rule.window is not None and rule.window < self.sampling.process_interval:
                raise ValueError(
                    f"rules[{i}].window ({rule.window}s) is shorter than "
                    f"sampling.process_interval ({self.sampling.process_interval}s)"
                )
        return self

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


INTERNAL_FIELDS = frozenset({"source", "base_dir"})  # set by load_config, never by a user
MAX_DEPTH = 32  # nesting of tables and arrays a config may have (options included)


def _format_errors(source: str, exc: ValidationError, data: dict[str, Any]) -> str:
    lines: dict[str, list[str]] = {}  # "source: path = value" → messages (union members)
    for err in exc.errors():
        loc = _key_path(err["loc"], data, missing=err["type"] == "missing")
        path = ".".join(p if not p.isdigit() else f"[{p}]" for p in loc).replace(".[", "[")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = _lookup_model(loc[:-1])
            valid = ", ".join(_public_keys(parent)) if parent else "see config/soakd.toml"
            msg = f"unknown key; valid keys here: {valid}"
        value = err.get("input")
        shown = "" if err["type"] == "missing" else f" = {_short(value)}"
        messages = lines.setdefault(f"{source}: {path or '(top level)'}{shown}", [])
        if msg not in messages:
            messages.append(msg)
    return "\n".join(f"{where}: {'; or '.join(msgs)}" for where, msgs in lines.items())


def _public_keys(model: type[BaseModel]) -> list[str]:
    """The keys a config file may set: not the internal fields (``source``, ``base_dir``)."""
    return sorted(
        (f.alias or name) for name, f in model.model_fields.items() if name not in INTERNAL_FIELDS
    )


def _check_depth(data: object, source: str) -> None:
    """A ConfigError naming the key where ``data`` nests deeper than MAX_DEPTH (iterative:
    a deep value must not exhaust the stack of whatever reads it later)."""
    stack: list[tuple[object, list[str]]] = [(data, [])]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            key = ".".join(path[:8]) + (".…" if len(path) > 8 else "")
            raise ConfigError(
                f"{source}: {key}: nested more than {MAX_DEPTH} levels deep; no soakd setting "
                "needs that: flatten the value"
            )
        if isinstance(node, dict):
            stack.extend((v, [*path, str(k)]) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, [*path, f"[{i}]"]) for i, v in enumerate(node))


def _deepest_line(text: str) -> int:
    """The 1-based line with the most opening brackets (where a too-deep value is)."""
    counts = [line.count("[") + line.count("{") for line in text.splitlines()] or [0]
    return counts.index(max(counts)) + 1


def _key_path(loc: tuple[int | str, ...], data: Any, *, missing: bool) -> list[str]:
    """The part of pydantic's ``loc`` that names keys of the file: pydantic appends the member
    it tried for a union value (``A.str``, ``A.int``), which is no key a user can find."""
    out: list[str] = []
    node = data
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif missing and i == len(loc) - 1:
            pass  # the missing key itself
        else:
            break
        out.append(str(part))
    return out


def _lookup_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        ann = field.annotation
        inner = _model_in(ann)
        if inner is None:
            return None
        model = inner
    return model


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_set(items: list[str]) -> list[tuple[list[str], Any]]:
    """``KEY=VALUE`` overrides: a dotted key and a TOML value (bare words are strings)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"--set {item!r}: expected KEY=VALUE with a dotted key, "
                "e.g. --set workload.users=16"
            )
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except RecursionError:
            raise ConfigError(
                f"--set {key}: the value is nested too deeply to read (more than "
                f"{MAX_DEPTH} levels is never needed); flatten it"
            ) from None
        except tomllib.TOMLDecodeError:
            if raw.strip() and all(c not in raw for c in "[]{}\"'="):
                value = raw.strip()  # bare word: a string, so --set target.method=run works
            else:
                raise ConfigError(
                    f"--set {item!r}: {raw!r} is not a TOML value; quote strings "
                    "(KEY='\"text\"'), tables are {a=1}, arrays [1, 2]"
                ) from None
        out.append((key.split("."), value))
    return out


def _apply(data: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item}: {part!r} is not a table")
        node = nxt
    node[path[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read, merge ``--set`` overrides and validate; any mistake is a ConfigError (exit 2)."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{p}: config file not found; pass an existing --config FILE"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read config file: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(
                f"{p}: line {_deepest_line(text)}: a value nested too deeply to read (more "
                f"than {MAX_DEPTH} levels is never needed); flatten it"
            ) from None
        base = p.resolve().parent
    for keys, value in parse_set(overrides or []):
        _apply(data, keys, value, ".".join(keys))
        source = source if path is not None else "--set"
    for key in sorted(INTERNAL_FIELDS & data.keys()):
        raise ConfigError(
            f"{source}: {key}: unknown key; valid keys here: {', '.join(_public_keys(Config))}"
        )
    _check_depth(data, source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc, data)) from None
    except (TypeError, ValueError) as exc:  # a validator that failed outside pydantic's wrapping
        raise ConfigError(f"{source}: {exc}") from None
    config = config.model_copy(update={"source": source, "base_dir": str(base)})
    _check_files(config, source)
    return config


def _check_files(config: Config, source: str) -> None:
    """Files the config names must exist now: check-config passes only what can run."""
    name = config.workload.queries_file
    if name is not None:
        path = config.resolve(name)
        if not path.is_file():
            why = "is not a regular file" if path.exists() else "does not exist"
            raise ConfigError(
                f"{source}: workload.queries_file = {name!r}: {path} {why}; give a readable "
                "file (relative paths are relative to the config file) or remove the key"
            )
