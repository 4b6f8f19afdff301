#!/usr/bin/env python
"""Start a real multi-node Ray cluster on one machine, for tests and demos.

Each node is its own ``ray start`` (the ``ray`` of the venv that runs this script) with its own
CPUs, memory, object store, ports and temp dir, and token authentication on:

    python cluster/local_cluster.py up --nodes 2 --cpus-per-node 1 --state-dir /tmp/demo
    python cluster/local_cluster.py status --state-dir /tmp/demo
    python cluster/local_cluster.py down --state-dir /tmp/demo

``up`` prints the Jobs API address (``http://127.0.0.1:<dashboard port>``) and the token file,
and writes ``<state dir>/cluster.json`` (addresses, ports, PIDs, token path). From Python::

    from cluster.local_cluster import start_cluster, stop_cluster
    info = start_cluster("/tmp/demo", nodes=2, cpus_per_node=1)
    ...  # submit jobs to info.dashboard_url with the token in info.token_file
    stop_cluster("/tmp/demo")

Token authentication (Ray 2.60): every Ray process reads ``RAY_AUTH_MODE=token`` and its token
from ``RAY_AUTH_TOKEN`` (the token itself) or ``RAY_AUTH_TOKEN_PATH`` (a file), falling back to
``~/.ray/auth_token``. This script writes a fresh random token to ``<state dir>/auth_token``
(mode 0600) and starts every node with ``RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<that file>``.
HTTP clients (the Jobs API, the State API, the dashboard) send it as ``Authorization: Bearer
<token>``. Ray's own CLI against this cluster needs the same two variables, e.g.

    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/demo/auth_token \\
        ray job submit --address http://127.0.0.1:8490 -- python -c 'print(1)'

Ports: the head's GCS (``--port``) and dashboard/Jobs API (``--dashboard-port``) are given; every
other port of node ``i`` lies in a block of 100 from ``port_base + 100 * i`` (node manager,
object manager, dashboard agent HTTP and gRPC, runtime-env agent, metrics export, Ray Client
server on the head, and 80 worker ports), by default between 20000 and 32000: below Linux's
ephemeral range and away from Ray's default worker ports (10002-19999). All are checked to be
free before anything starts.

``down`` stops only this cluster's processes: those whose environment carries this cluster's id
(every process ``ray start`` spawns inherits it, job drivers included) or whose command line
names this cluster's temp dir. SIGTERM first, SIGKILL after a grace period, then it checks that
none is left. It never runs ``ray stop`` (which stops every Ray process on the machine).

Only the standard library is used here, so this module imports without Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

log = logging.getLogger("local_cluster")

MARKER_ENV = "GENMODELS_LOCAL_CLUSTER_ID"
STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"

DEFAULT_PORT = 6490
DEFAULT_DASHBOARD_PORT = 8490
MAX_NODES = 8
PORT_BLOCK = 100  # ports reserved per node
WORKER_PORT_OFFSET = 20  # worker ports are block+20 .. block+99
# A Unix socket path holds at most 107 bytes; Ray puts its sockets at
# <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (about 62 more).
MAX_TEMP_DIR_LEN = 36

GiB = 1024**3
MiB = 1024**2


class ClusterError(RuntimeError):
    """A cluster could not be started, inspected or stopped; the message says why."""


@dataclasses.dataclass
class NodeInfo:
    index: int
    role: str  # "head" | "worker"
    num_cpus: int
    memory: int
    object_store_memory: int
    temp_dir: str
    ports: dict[str, int]
    min_worker_port: int
    max_worker_port: int
    start_log: str


@dataclasses.dataclass
class ClusterInfo:
    cluster_id: str
    state_dir: str
    temp_dir: str
    gcs_address: str
    dashboard_url: str
    token_file: str
    python: str
    nodes: list[NodeInfo]
    pids: list[int]
    started_at: float
    startup_s: float

    @property
    def address(self) -> str:
        """The Jobs API address to submit to (``http://127.0.0.1:<dashboard port>``)."""
        return self.dashboard_url

    def token(self) -> str:
        return Path(self.token_file).read_text().strip()

    def client_env(self) -> dict[str, str]:
        """Environment variables that make Ray's own CLI / SDK talk to this cluster."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_file,
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
        }

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ClusterInfo:
        data = dict(data)
        data["nodes"] = [NodeInfo(**n) for n in data["nodes"]]
        return cls(**data)


# ----------------------------------------------------------------------------- helpers


def ray_executable() -> str:
    """The ``ray`` CLI next to the running interpreter (the current venv's)."""
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise ClusterError(f"no `ray` executable next to {sys.executable} nor on PATH")
    return found


def _port_is_free(port: int) -> bool:
    # Binding 0.0.0.0 fails if anything listens on the port on any local address.
    # SO_REUSEADDR, as Ray's servers use, so that connections of a previous cluster still in
    # TIME_WAIT do not count as taken.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def default_port_base(gcs_port: int) -> int:
    """A block of 800 ports in 20000..32000 chosen from the GCS port (so two clusters with
    different GCS ports usually get different blocks)."""
    return 20000 + (gcs_port % 15) * (MAX_NODES * PORT_BLOCK)


def _node_ports(index: int, port_base: int, gcs_port: int, dashboard_port: int) -> dict:
    b = port_base + index * PORT_BLOCK
    ports = {
        "node_manager": b,
        "object_manager": b + 1,
        "dashboard_agent_listen": b + 2,
        "dashboard_agent_grpc": b + 3,
        "runtime_env_agent": b + 4,
        "metrics_export": b + 5,
    }
    if index == 0:
        ports.update(gcs=gcs_port, dashboard=dashboard_port, ray_client_server=b + 6)
    return ports


def _proc_read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None if it is gone."""
    stat = _proc_read(pid, "stat")
    if not stat:
        return None
    # the fields after the ')' that closes the command name: state, ppid, ...
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        st = _stat(pid)
        if st is None:
            break
        pid = st[1]
    return pids


def _has_fd_under(pid: int, prefix: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def find_cluster_pids(cluster_id: str, temp_dir: str | None = None) -> list[int]:
    """PIDs of the live processes of one cluster, and of no other program.

    A process belongs to the cluster if its environment carries the cluster's id, or its
    command line names the cluster's temp dir, or it holds a file open under that temp dir
    (Ray's processes keep their log files there), or its parent belongs to the cluster.
    The environment alone is not enough: Ray's agents and workers rename themselves
    (``ray::IDLE``, ``ray::DashboardAgent``), which overwrites the memory that
    /proc/PID/environ and /proc/PID/cmdline show. Never this process or its ancestors.
    """
    marker = f"{MARKER_ENV}={cluster_id}".encode()
    prefix = os.path.join(temp_dir, "") if temp_dir else None
    parents: dict[int, int] = {}
    matched: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        parents[pid] = st[1]
        if marker in _proc_read(pid, "environ").split(b"\0"):
            matched.add(pid)
        elif prefix is not None and (
            prefix.encode() in _proc_read(pid, "cmdline") or _has_fd_under(pid, prefix)
        ):
            matched.add(pid)
    grew = True
    while grew:  # add descendants
        grew = False
        for pid, ppid in parents.items():
            if ppid in matched and pid not in matched:
                matched.add(pid)
                grew = True
    return sorted(matched - _ancestors())


def _http_get_json(url: str, token: str | None, timeout: float = 5.0):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def alive_nodes(dashboard_url: str, token: str | None, timeout: float = 10.0) -> list[dict]:
    """The cluster's ALIVE nodes from the State API (``ray list nodes`` over HTTP)."""
    data = _http_get_json(
        f"{dashboard_url}/api/v0/nodes?limit=1000&detail=false", token, timeout=timeout
    )
    rows = data["data"]["result"]["result"]
    return [r for r in rows if r.get("state") == "ALIVE"]


def node_ids(state_dir: str | os.PathLike) -> list[str]:
    """Node IDs (hex) of the cluster recorded in ``state_dir``, as the State API lists them."""
    info = load_cluster(state_dir)
    return sorted(n["node_id"] for n in alive_nodes(info.dashboard_url, info.token()))


def _tail(path: str | os.PathLike, n: int = 30) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def load_cluster(state_dir: str | os.PathLike) -> ClusterInfo:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        raise ClusterError(f"no {STATE_FILE} in {state_dir}: no cluster was started there")
    return ClusterInfo.from_json(json.loads(path.read_text()))


def _write_state(info: ClusterInfo) -> None:
    path = Path(info.state_dir) / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------- start / stop


def start_cluster(
    state_dir: str | os.PathLike,
    nodes: int = 2,
    cpus_per_node: int = 1,
    *,
    memory_per_node: int = 2 * GiB,
    object_store_per_node: int = 256 * MiB,
    port: int = DEFAULT_PORT,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    port_base: int | None = None,
    temp_dir: str | os.PathLike | None = None,
    gpus_per_node: int = 0,
    timeout_s: float = 90.0,
) -> ClusterInfo:
    """Start a head and ``nodes - 1`` worker nodes; return when all are ALIVE and the Jobs API
    answers. On any failure the processes already started are stopped again."""
    t0 = time.monotonic()
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"nodes must be between 1 and {MAX_NODES}, got {nodes}")
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if (state / STATE_FILE).exists():
        old = load_cluster(state)
        if find_cluster_pids(old.cluster_id, old.temp_dir):
            raise ClusterError(
                f"a cluster recorded in {state / STATE_FILE} is still running: run `down` first"
            )

    # --- ports
    if port_base is None:
        port_base = default_port_base(port)
    node_specs = []
    wanted: dict[int, str] = {}
    for i in range(nodes):
        ports = _node_ports(i, port_base, port, dashboard_port)
        lo = port_base + i * PORT_BLOCK + WORKER_PORT_OFFSET
        hi = port_base + (i + 1) * PORT_BLOCK - 1
        for name, p in ports.items():
            if p in wanted:
                raise ClusterError(f"port {p} is assigned twice ({wanted[p]} and node{i} {name})")
            wanted[p] = f"node{i} {name}"
        for p in range(lo, hi + 1):
            if p in wanted:
                raise ClusterError(
                    f"port {p} ({wanted[p]}) falls in node{i}'s worker ports {lo}-{hi}: "
                    f"choose --port/--dashboard-port outside {port_base}-{port_base + nodes * PORT_BLOCK - 1} "
                    "or another --port-base"
                )
            wanted[p] = f"node{i} worker ports {lo}-{hi}"
        node_specs.append((i, ports, lo, hi))
    if port_base < 1024 or port_base + nodes * PORT_BLOCK > 65535:
        raise ClusterError(f"port base {port_base} leaves the valid port range")
    taken = [(p, what) for p, what in sorted(wanted.items()) if not _port_is_free(p)]
    if taken:
        listing = ", ".join(f"{p} ({what})" for p, what in taken[:10])
        more = f" and {len(taken) - 10} more" if len(taken) > 10 else ""
        msg = (
            f"cannot start the cluster: port(s) already in use: {listing}{more}. Another Ray "
            "(or another local cluster) may be using them; pick other ports with --port, "
            "--dashboard-port or --port-base."
        )
        log.error(msg)
        raise ClusterError(msg)

    # --- temp dir: short, because of the Unix socket path limit
    if temp_dir is None:
        candidate = state / "ray"
        if len(str(candidate)) <= MAX_TEMP_DIR_LEN - 3:
            candidate.mkdir(exist_ok=True)
            temp_dir = str(candidate)
        else:
            temp_dir = tempfile.mkdtemp(prefix="glc-", dir="/tmp")
    temp_root = str(Path(temp_dir).resolve())
    if len(temp_root) + 3 > MAX_TEMP_DIR_LEN:
        raise ClusterError(
            f"temp dir {temp_root!r} is too long ({len(temp_root)} chars): Ray's Unix socket "
            f"paths below it would pass the 107-byte limit; use one of at most "
            f"{MAX_TEMP_DIR_LEN - 3} characters (e.g. under /tmp)"
        )
    Path(temp_root).mkdir(parents=True, exist_ok=True)

    # --- token (0600, fresh for every cluster)
    token_file = state / TOKEN_FILE
    if token_file.exists():
        token_file.unlink()
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    token = token_file.read_text().strip()

    cluster_id = f"{port}-{secrets.token_hex(6)}"
    ray_bin = ray_executable()
    base_env = dict(os.environ)
    for var in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        base_env.pop(var, None)
    base_env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_file),
            MARKER_ENV: cluster_id,
            "RAY_USAGE_STATS_ENABLED": "0",
            # `python` in a job entrypoint is this venv's python
            "PATH": str(Path(sys.executable).parent) + os.pathsep + base_env.get("PATH", ""),
        }
    )

    gcs_address = f"127.0.0.1:{port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    node_infos: list[NodeInfo] = []
    info = ClusterInfo(
        cluster_id=cluster_id,
        state_dir=str(state),
        temp_dir=temp_root,
        gcs_address=gcs_address,
        dashboard_url=dashboard_url,
        token_file=str(token_file),
        python=sys.executable,
        nodes=node_infos,
        pids=[],
        started_at=time.time(),
        startup_s=0.0,
    )

    def launch(i: int, ports: dict, lo: int, hi: int) -> tuple[subprocess.Popen, NodeInfo]:
        node_temp = os.path.join(temp_root, f"n{i}")
        os.makedirs(node_temp, exist_ok=True)
        cmd = [ray_bin, "start"]
        if i == 0:
            cmd += [
                "--head",
                f"--port={port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={ports['ray_client_server']}",
            ]
        else:
            cmd += [f"--address={gcs_address}"]
        cmd += [
            f"--num-cpus={cpus_per_node}",
            f"--num-gpus={gpus_per_node}",
            f"--memory={memory_per_node}",
            f"--object-store-memory={object_store_per_node}",
            f"--temp-dir={node_temp}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            f"--metrics-export-port={ports['metrics_export']}",
            f"--min-worker-port={lo}",
            f"--max-worker-port={hi}",
            "--disable-usage-stats",
        ]
        start_log = str(state / f"node{i}.start.log")
        env = dict(base_env, RAY_TMPDIR=node_temp)
        with open(start_log, "w") as out:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        node = NodeInfo(
            index=i,
            role="head" if i == 0 else "worker",
            num_cpus=cpus_per_node,
            memory=memory_per_node,
            object_store_memory=object_store_per_node,
            temp_dir=node_temp,
            ports=ports,
            min_worker_port=lo,
            max_worker_port=hi,
            start_log=start_log,
        )
        return proc, node

    def wait_proc(proc: subprocess.Popen, node: NodeInfo, deadline: float) -> None:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise ClusterError(
                f"`ray start` for node{node.index} did not return in time; "
                f"log {node.start_log}:\n{_tail(node.start_log)}"
            ) from None
        if rc != 0:
            raise ClusterError(
                f"`ray start` for node{node.index} ({node.role}) failed with exit code {rc}; "
                f"log {node.start_log}:\n{_tail(node.start_log)}"
            )

    deadline = time.monotonic() + timeout_s
    try:
        # head first (the workers need its GCS), then all workers at once
        proc, head = launch(*node_specs[0])
        node_infos.append(head)
        _write_state(info)
        wait_proc(proc, head, deadline)
        log.info("head up at %s (%.1fs)", gcs_address, time.monotonic() - t0)
        workers = [launch(*spec) for spec in node_specs[1:]]
        node_infos.extend(n for _, n in workers)
        _write_state(info)
        for proc, node in workers:
            wait_proc(proc, node, deadline)
        # all nodes registered and the Jobs API answering (with the token)
        last_err: Exception | None = None
        while True:
            try:
                alive = alive_nodes(dashboard_url, token, timeout=5.0)
                _http_get_json(f"{dashboard_url}/api/version", token, timeout=5.0)
                if len(alive) >= nodes:
                    break
                last_err = ClusterError(f"{len(alive)} of {nodes} nodes alive")
            except (OSError, ValueError, KeyError) as e:  # URLError is an OSError
                last_err = e
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"cluster did not come up within {timeout_s:.0f}s: {last_err}; "
                    f"logs under {temp_root}"
                )
            time.sleep(0.5)
    except BaseException:
        info.pids = find_cluster_pids(cluster_id, temp_root)
        _write_state(info)
        log.error("start failed; stopping what was started")
        try:
            stop_cluster(state)
        except ClusterError as e:  # pragma: no cover - best effort
            log.error("%s", e)
        raise

    info.pids = find_cluster_pids(cluster_id, temp_root)
    info.startup_s = round(time.monotonic() - t0, 2)
    _write_state(info)
    log.info("cluster up: %d nodes in %.1fs", nodes, info.startup_s)
    return info


def _kind(pid: int) -> str:
    """'raylet', 'gcs' or 'other', from the executable's name."""
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        exe = ""
    return {"raylet": "raylet", "gcs_server": "gcs"}.get(exe, "other")


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as e:  # pragma: no cover
            log.error("cannot signal %d: %s", pid, e)


def stop_cluster(
    state_dir: str | os.PathLike, grace_s: float = 15.0, *, remove_temp_dir: bool = False
) -> list[int]:
    """Stop every process of the cluster recorded in ``state_dir``; return the PIDs signalled.

    As ``ray stop`` does, but for this cluster only: first the raylets (their workers and
    agents follow them), then everything else, then the GCS, each group with SIGTERM and,
    after its share of ``grace_s``, SIGKILL. The processes are looked up afresh each time
    (workers and job drivers come and go; a PID in cluster.json may since belong to another
    program). Raises ClusterError if any process of the cluster survives."""
    info = load_cluster(state_dir)
    signalled: set[int] = set()

    def ours() -> list[int]:
        return find_cluster_pids(info.cluster_id, info.temp_dir)

    for bucket in ("raylet", "other", "gcs"):

        def members(bucket=bucket):
            pids = ours()
            kinds = {p: _kind(p) for p in pids}
            if bucket == "other":  # everything but the GCS, raylets that somehow remain too
                return [p for p in pids if kinds[p] != "gcs"]
            return [p for p in pids if kinds[p] == bucket]

        targets = members()
        if not targets:
            continue
        _signal(targets, signal.SIGTERM)
        signalled.update(targets)
        deadline = time.monotonic() + grace_s / 3
        while targets and time.monotonic() < deadline:
            time.sleep(0.2)
            targets = members()
            new = [p for p in targets if p not in signalled]  # spawned meanwhile
            _signal(new, signal.SIGTERM)
            signalled.update(new)
        if targets:
            log.warning("%d %s process(es) ignored SIGTERM; sending SIGKILL", len(targets), bucket)
            _signal(targets, signal.SIGKILL)
            signalled.update(targets)
    deadline = time.monotonic() + 5.0
    remaining = ours()
    while remaining and time.monotonic() < deadline:
        _signal(remaining, signal.SIGKILL)
        signalled.update(remaining)
        time.sleep(0.2)
        remaining = ours()
    if remaining:
        raise ClusterError(f"processes of cluster {info.cluster_id} still alive: {remaining}")
    info.pids = []
    _write_state(info)
    if remove_temp_dir:
        shutil.rmtree(info.temp_dir, ignore_errors=True)
    return sorted(signalled)


def cluster_status(state_dir: str | os.PathLike) -> dict:
    """What is running: live PIDs, and the nodes the State API reports (if reachable)."""
    info = load_cluster(state_dir)
    pids = find_cluster_pids(info.cluster_id, info.temp_dir)
    status: dict = {
        "state_dir": info.state_dir,
        "address": info.dashboard_url,
        "gcs_address": info.gcs_address,
        "token_file": info.token_file,
        "temp_dir": info.temp_dir,
        "running": bool(pids),
        "pids": pids,
        "nodes": None,
    }
    if pids:
        try:
            status["nodes"] = [
                {
                    "node_id": n["node_id"],
                    "is_head_node": n.get("is_head_node"),
                    "resources": n.get("resources_total"),
                }
                for n in alive_nodes(info.dashboard_url, info.token())
            ]
        except (OSError, ValueError, KeyError) as e:
            status["error"] = f"State API at {info.dashboard_url} did not answer: {e}"
    return status


# ----------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, mult in (("GB", GiB), ("G", GiB), ("MB", MiB), ("M", MiB)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a head and worker nodes")
    up.add_argument("--state-dir", required=True)
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--cpus-per-node", type=int, default=1)
    up.add_argument("--gpus-per-node", type=int, default=0)
    up.add_argument("--memory-per-node", type=_parse_size, default=2 * GiB, help="e.g. 2G")
    up.add_argument("--object-store-per-node", type=_parse_size, default=256 * MiB)
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="the head's GCS port")
    up.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT)
    up.add_argument("--port-base", type=int, default=None, help="first port of node blocks")
    up.add_argument("--temp-dir", default=None, help="Ray's temp dir (short path)")
    up.add_argument("--timeout", type=float, default=90.0)
    for name in ("status", "down"):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", required=True)
    sub.choices["down"].add_argument("--grace", type=float, default=15.0)
    sub.choices["down"].add_argument("--remove-temp-dir", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.cmd == "up":
            info = start_cluster(
                args.state_dir,
                nodes=args.nodes,
                cpus_per_node=args.cpus_per_node,
                gpus_per_node=args.gpus_per_node,
                memory_per_node=args.memory_per_node,
                object_store_per_node=args.object_store_per_node,
                port=args.port,
                dashboard_port=args.dashboard_port,
                port_base=args.port_base,
                temp_dir=args.temp_dir,
                timeout_s=args.timeout,
            )
            print(f"address:    {info.dashboard_url}")
            print(f"gcs:        {info.gcs_address}")
            print(f"token file: {info.token_file}")
            print(f"temp dir:   {info.temp_dir}")
            print(
                f"nodes:      {len(info.nodes)} x {args.cpus_per_node} CPU, up in {info.startup_s}s"
            )
            print("clients:")
            print(
                f"  python -m pipelines.submit --address {info.dashboard_url} "
                f"--token-file {info.token_file} -- python -c 'print(1)'"
            )
            print(
                f"  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={info.token_file} "
                f"ray job submit --address {info.dashboard_url} -- python -c 'print(1)'"
            )
            print(f"  HTTP: Authorization: Bearer $(cat {info.token_file})")
        elif args.cmd == "status":
            st = cluster_status(args.state_dir)
            print(json.dumps(st, indent=2))
            return 0 if st["running"] else 3
        else:
            stopped = stop_cluster(
                args.state_dir, grace_s=args.grace, remove_temp_dir=args.remove_temp_dir
            )
            print(f"stopped {len(stopped)} process(es); none left")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
