"""The stateful driver: clients, workers and an admin connection acting on a live
target, checked against the job model after every action.

An *action* is a small JSON-able dict (``{"rule": "grab", "worker": 0, "kind": 1}``);
references to connections and jobs are indices into the driver's own lists, never
handles, so an action list replays against a fresh server (where handles differ) and
survives shrinking.  Every check raises :class:`Violation` with a finding class.

Every silent request (CAN_DO, WORK_*, ...) is followed by a sync round trip on its
connection, so when the next action runs the server has processed it; connection
drops are followed by polling ``workers`` until the server noticed.  That keeps the
checks exact without sleeping.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from gearproto import ErrorCode, Priority, admin, events

from .driver_admin import WEIRD, AdminChecks, AdminLink, ClientPeer, WorkerPeer
from .execute import Timeouts
from .model import Job, JobState, Model
from .oracles import server_state
from .peer import Peer, PeerClosed, PeerError, PeerTimeout
from .target import Target
from .verdict import FindingClass, Violation, normalise

__all__ = ["Driver", "Violation"]

_WORK_EVENTS = (
    events.WorkComplete,
    events.WorkFail,
    events.WorkException,
    events.WorkData,
    events.WorkWarning,
    events.WorkStatus,
)
_ASSIGN = (events.JobAssign, events.JobAssignUniq, events.JobAssignAll)
MAX_PEERS = 4


class Driver(AdminChecks):
    """One stateful run: a fresh set of names on the target, a model, and the peers."""

    def __init__(
        self,
        target: Target,
        prefix: bytes,
        *,
        timeouts: Timeouts | None = None,
        destructive: bool = False,
        wake_wait: float = 0.5,
    ) -> None:
        self.target = target
        self.prefix = prefix
        self.t = timeouts or Timeouts()
        self.destructive = destructive
        self.wake_wait = wake_wait
        self.functions = [prefix + b"f%d" % i for i in range(3)]
        self.model = Model()
        self.clients: list[ClientPeer] = []
        self.workers: list[WorkerPeer] = []
        self.names: set[bytes] = set(self.functions)
        self.ids: set[bytes] = set()
        self.log: list[dict[str, Any]] = []
        self.maxqueue: dict[bytes, int] = {}
        self.ghosts: dict[bytes, int] = {}
        self._ids = 0
        self._tokens = 0
        self._admin: AdminLink | None = None
        self.unsupported: set[str] = set()

    # ------------------------------------------------------------------- plumbing

    def _guard(self, what: str, fn: Any, *args: Any) -> Any:
        """Run a peer operation; turn transport trouble into a classified Violation."""
        try:
            return fn(*args)
        except PeerError as exc:
            if exc.fatal:
                raise Violation(
                    FindingClass.PROTOCOL_VIOLATION,
                    normalise(str(exc).split(": ", 1)[-1]),
                    f"{what}: the core refused a reply: {exc}",
                ) from None
            raise Violation(
                FindingClass.WRONG_CLIENT,
                "work-for-unsubmitted-job",
                f"{what}: {exc}",
            ) from None
        except PeerTimeout as exc:
            self._diagnose(what)
            raise Violation(
                FindingClass.MISSING_REPLY, what, f"no reply to {what} ({exc})"
            ) from None
        except (PeerClosed, OSError) as exc:
            self._diagnose(what)
            raise Violation(
                FindingClass.UNEXPECTED_CLOSE,
                what,
                f"the server closed the connection during {what} ({exc})",
            ) from None

    def _diagnose(self, what: str) -> None:
        state = server_state(self.target, self.t)
        if state.state == "crashed":
            raise Violation(
                FindingClass.CRASH, "stateful", f"the target died during {what} ({state.detail})"
            )
        if state.state == "hung":
            raise Violation(
                FindingClass.HANG, "stateful", f"the target hung during {what} ({state.detail})"
            )

    def _token(self) -> bytes:
        self._tokens += 1
        return self.prefix + b"sync%d" % self._tokens

    def _peer(self, name: str) -> Peer:
        try:
            return Peer(self.target, name, timeout=self.t.probe)
        except OSError as exc:
            self._diagnose(f"connect ({name})")
            raise Violation(
                FindingClass.UNEXPECTED_CLOSE, "connect", f"cannot connect: {exc}"
            ) from None

    def _request(self, peer: Peer, event: Any, want: tuple[type[Any], ...], what: str) -> Any:
        return self._guard(what, peer.request, event, want)

    def _sync(self, peer: Peer, what: str) -> list[events.Error]:
        """Round trip on ``peer``; returns the ERRORs that arrived before the answer."""
        token = self._token()
        self._guard(what, peer.send, events.GetStatus(token))
        errors: list[events.Error] = []
        while True:
            reply = self._guard(what, peer.take, (events.StatusRes, events.Error))
            if isinstance(reply, events.Error):
                errors.append(reply)
                continue
            if reply.handle == token:
                return errors

    def _admin_link(self) -> AdminLink:
        if self._admin is None or self._admin.peer.closed:
            self._admin = AdminLink(self._peer("admin"))
        return self._admin

    def _admin_cmd(self, command: admin.AdminCommand) -> tuple[str, list[bytes]]:
        link = self._admin_link()
        what = f"admin {admin.format_command(command).split()[0].decode()}"
        result: tuple[str, list[bytes]] = self._guard(what, link.command, command, self.t.probe)
        return result

    def pump(self) -> None:
        """Read what every peer received; check results and NOOPs as they come."""
        for client in self.clients:
            self._guard("reading a client", client.peer.poll, 0.0)
            self._client_events(client)
        for worker in self.workers:
            self._guard("reading a worker", worker.peer.poll, 0.0)
            self._worker_events(worker)

    def _client_events(self, client: ClientPeer) -> None:
        keep = []
        for event, answered in list(client.peer.inbox):
            if isinstance(event, _WORK_EVENTS):
                self._client_work(client, event)
            else:
                keep.append((event, answered))
        client.peer.inbox.clear()
        client.peer.inbox.extend(keep)

    def _worker_events(self, worker: WorkerPeer) -> None:
        keep = []
        for event, answered in list(worker.peer.inbox):
            if isinstance(event, events.Noop):
                worker.sleeping = False
                worker.woken += 1
            else:
                keep.append((event, answered))
        worker.peer.inbox.clear()
        worker.peer.inbox.extend(keep)

    def _client_work(self, client: ClientPeer, event: Any) -> None:
        handle = event.handle
        job = self.model.by_handle.get(handle)
        if job is None or client.cid not in job.ever_clients:
            raise Violation(
                FindingClass.WRONG_CLIENT,
                type(event).__name__,
                f"client {client.cid} got {type(event).__name__} for {handle!r},"
                " a job it never submitted",
            )
        kind = {
            events.WorkComplete: "complete",
            events.WorkFail: "fail",
            events.WorkException: "exception",
        }.get(type(event))
        if kind is None:
            return
        data = getattr(event, "data", b"")
        client.results.setdefault(handle, []).append((kind, data))
        outcome = job.outcome
        if kind == "complete" and outcome != ("complete", data):
            raise Violation(
                FindingClass.JOB_MIXUP,
                "complete-content" if outcome else "complete-before-worker",
                f"client {client.cid} got WORK_COMPLETE {data[:40]!r} for job {job.seq};"
                f" its worker sent {outcome!r}",
            )
        if kind == "exception" and (outcome is None or outcome[0] != "exception"):
            raise Violation(
                FindingClass.JOB_MIXUP,
                "exception-without-worker",
                f"client {client.cid} got WORK_EXCEPTION for job {job.seq},"
                f" worker sent {outcome!r}",
            )
        if kind == "fail" and not (
            (outcome is not None and outcome[0] in ("fail", "exception"))
            or job.state is JobState.CANCELLED
            or job.dropped
            or job.allowed > 1
            or job.cancelled
        ):
            raise Violation(
                FindingClass.JOB_MIXUP,
                "fail-without-cause",
                f"client {client.cid} got WORK_FAIL for job {job.seq}, which no worker failed"
                f" (worker sent {outcome!r})",
            )

    # ------------------------------------------------------------------- dispatch

    def do(self, action: dict[str, Any]) -> None:
        """Run one action (and record it); raises :class:`Violation`."""
        self.log.append(action)
        handler = getattr(self, "_do_" + str(action.get("rule")), None)
        if handler is None:
            raise ValueError(f"unknown action {action!r}")
        handler(action)
        self.pump()

    def _client(self, index: int) -> ClientPeer | None:
        return self.clients[index % len(self.clients)] if self.clients else None

    def _worker(self, index: int) -> WorkerPeer | None:
        return self.workers[index % len(self.workers)] if self.workers else None

    # --------------------------------------------------------------------- actions

    def _do_client(self, action: dict[str, Any]) -> None:
        if len(self.clients) >= MAX_PEERS:
            return
        self._ids += 1
        self.clients.append(ClientPeer(self._ids, self._peer(f"client {self._ids}")))

    def _do_worker(self, action: dict[str, Any]) -> None:
        if len(self.workers) >= MAX_PEERS:
            return
        self._ids += 1
        client_id = self.prefix + b"w%d" % self._ids
        peer = self._peer(f"worker {self._ids}")
        worker = WorkerPeer(self._ids, peer, client_id)
        self.workers.append(worker)
        self.ids.add(client_id)
        self._guard("SET_CLIENT_ID", peer.send, events.SetClientId(client_id))
        # The admin connection must see the id: wait until the server processed it.
        self._sync(peer, "SET_CLIENT_ID")

    def _unique(self, code: int) -> bytes:
        stem = self.prefix + b"u1"
        return (b"", b"-", stem, self.prefix + b"u2", stem.ljust(64, b"x"))[code % 5]

    @staticmethod
    def _data(code: int) -> bytes:
        return (b"", b"d1", b"d2", b"x" * 3000)[code % 4]

    def _do_submit(self, action: dict[str, Any]) -> None:
        client = self._client(action["client"])
        if client is None:
            return
        fn = self.functions[action["fn"] % 3]
        unique = self._unique(action["unique"])
        data = self._data(action["data"])
        priority = Priority(action["priority"] % 3)
        background = bool(action["background"])
        event = events.SubmitJob(fn, unique, data, priority, background)
        self._submitted(client, event, fn, unique, data, background, int(priority))

    def _do_submit_epoch(self, action: dict[str, Any]) -> None:
        client = self._client(action["client"])
        if client is None:
            return
        fn = self.functions[action["fn"] % 3]
        unique = self._unique(action["unique"])
        when = action["when"]
        epoch = {"zero": 0, "past": int(time.time()) - 100}.get(when, int(time.time()) + 3600)
        event = events.SubmitJobEpoch(fn, unique, epoch, b"epoch")
        self._submitted(client, event, fn, unique, b"epoch", True, 1, epoch=epoch)

    def _do_submit_reduce(self, action: dict[str, Any]) -> None:
        client = self._client(action["client"])
        if client is None:
            return
        fn = self.functions[action["fn"] % 3]
        reducer = self.functions[(action["fn"] + 1) % 3]
        unique = self._unique(action["unique"])
        background = bool(action["background"])
        event = events.SubmitReduceJob(fn, unique, reducer, b"", b"reduce", background)
        self._submitted(client, event, fn, unique, b"reduce", background, 1, reducer=reducer)

    def _submitted(
        self,
        client: ClientPeer,
        event: Any,
        fn: bytes,
        unique: bytes,
        data: bytes,
        background: bool,
        priority: int,
        *,
        epoch: int | None = None,
        reducer: bytes | None = None,
    ) -> None:
        what = type(event).__name__
        reply = self._request(client.peer, event, (events.JobCreated,), what)
        if isinstance(reply, events.Error):
            if reply.code == ErrorCode.QUEUE_ERROR and self.maxqueue.get(fn):
                return
            return  # a server may refuse work; an unacknowledged job is nobody's loss
        handle = reply.handle
        existing = self.model.by_handle.get(handle)
        if existing is not None and existing.active:
            joins = existing.function == fn and (
                (existing.coalesces and existing.unique == unique)
                or (unique == b"-" == existing.unique and existing.data == data)
            )
            if not joins:
                raise Violation(
                    FindingClass.JOB_MIXUP,
                    "coalesced-into-unrelated",
                    f"{what} ({fn!r}, unique {unique!r}) got the handle of job {existing.seq}"
                    f" ({existing.function!r}, unique {existing.unique!r})",
                )
            if background:
                existing.bg_joined = True
            else:
                existing.clients[client.cid] = existing.clients.get(client.cid, 0) + 1
                existing.ever_clients.add(client.cid)
            return
        expected = self.model.active_with(fn, unique, data)
        if (
            expected is not None
            and expected.certain
            and expected.state is not JobState.CANCELLED
            and epoch is None
            and expected.epoch is None
        ):
            raise Violation(
                FindingClass.DUPLICATE_JOB,
                "unique-not-coalesced",
                f"{what} with unique {unique[:70]!r} created a new job instead of joining"
                f" job {expected.seq} (same function and unique), so the work runs twice",
            )
        job = Job(
            len(self.model.jobs), handle, fn, unique, data, background, priority, epoch, reducer
        )
        if not background:
            job.clients[client.cid] = 1
            job.ever_clients.add(client.cid)
        self.model.add(job)
        self._check_wakeup([job], f"a new {fn!r} job")

    def _check_wakeup(self, jobs: list[Job], why: str) -> None:
        runnable = [j for j in jobs if j.state is JobState.QUEUED and j.due() and j.certain]
        if not runnable:
            return
        sleepers = [
            w
            for w in self.workers
            if w.sleeping and any(j.function in w.functions for j in runnable)
        ]
        if not sleepers:
            return
        deadline = time.monotonic() + self.wake_wait
        while time.monotonic() < deadline:
            for worker in sleepers:
                self._guard("waiting for NOOP", worker.peer.poll, 0.01)
                self._worker_events(worker)
            if any(not w.sleeping for w in sleepers):
                return
        names = ", ".join(f"worker {w.wid}" for w in sleepers)
        raise Violation(
            FindingClass.MISSED_WAKEUP,
            "noop",
            f"{names} slept through {why}: no NOOP within {self.wake_wait:.1f}s",
        )

    def _do_can_do(self, action: dict[str, Any]) -> None:
        worker = self._worker(action["worker"])
        if worker is None:
            return
        fn = self.functions[action["fn"] % 3]
        self._guard("CAN_DO", worker.peer.send, events.CanDo(fn))
        worker.functions[fn] = worker.functions.get(fn, 0) + 1
        self._sync(worker.peer, "CAN_DO")

    def _do_cant_do(self, action: dict[str, Any]) -> None:
        worker = self._worker(action["worker"])
        if worker is None:
            return
        fn = self.functions[action["fn"] % 3]
        if any(self.model.by_handle[h].function == fn for h in worker.held):
            return  # what happens to held jobs is server policy; not modelled
        self._guard("CANT_DO", worker.peer.send, events.CantDo(fn))
        worker.functions.pop(fn, None)
        self._sync(worker.peer, "CANT_DO")

    def _do_reset(self, action: dict[str, Any]) -> None:
        worker = self._worker(action["worker"])
        if worker is None or worker.held:
            return
        self._guard("RESET_ABILITIES", worker.peer.send, events.ResetAbilities())
        worker.functions.clear()
        self._sync(worker.peer, "RESET_ABILITIES")

    def _do_weird_name(self, action: dict[str, Any]) -> None:
        """A function name or client id with bytes that break admin listings."""
        worker = self._worker(action["worker"])
        if worker is None:
            return
        special = WEIRD[action["kind"] % len(WEIRD)]
        if action.get("id"):
            client_id = self.prefix + b"id" + special + b"x"
            self.ids.add(client_id)
            worker.client_id = client_id
            self._guard("SET_CLIENT_ID", worker.peer.send, events.SetClientId(client_id))
            self._sync(worker.peer, "SET_CLIENT_ID")
            return
        name = self.prefix + b"w" + special + self.prefix + b"fake\t9\t9\t9"
        self.names.add(name)
        self._guard("CAN_DO", worker.peer.send, events.CanDo(name))
        worker.functions[name] = worker.functions.get(name, 0) + 1
        self._sync(worker.peer, "CAN_DO")

    def _do_sleep(self, action: dict[str, Any]) -> None:
        worker = self._worker(action["worker"])
        if worker is None:
            return
        self._guard("PRE_SLEEP", worker.peer.send, events.PreSleep())
        worker.sleeping = True
        self._sync(worker.peer, "PRE_SLEEP")
        self._worker_events(worker)
        pending = self.model.runnable_for(set(worker.functions))
        if pending and worker.sleeping:
            self._check_wakeup(pending, "PRE_SLEEP while a job was queued")

    def _do_grab(self, action: dict[str, Any]) -> None:
        worker = self._worker(action["worker"])
        if worker is None:
            return
        kind = action["kind"] % 3
        event = (events.GrabJob(), events.GrabJobUniq(), events.GrabJobAll())[kind]
        self._grab(worker, event)

    def _grab(self, worker: WorkerPeer, event: Any) -> Job | None:
        what = type(event).__name__
        reply = self._request(worker.peer, event, (*_ASSIGN, events.NoJob), what)
        worker.sleeping = False
        if isinstance(reply, events.Error):
            raise Violation(
                FindingClass.PROTOCOL_VIOLATION,
                f"{what}-error",
                f"{what} answered with ERROR {reply.code!r}",
            )
        if isinstance(reply, events.NoJob):
            waiting = self.model.runnable_for(set(worker.functions))
            if waiting:
                job = waiting[0]
                raise Violation(
                    FindingClass.LOST_JOB,
                    "no-job-while-queued",
                    f"{what} got NO_JOB although job {job.seq} ({job.function!r},"
                    f" priority {Priority(job.priority).name}) is queued and runnable",
                    {
                        "queued": [
                            (j.seq, j.priority, j.epoch)
                            for j in self.model.jobs
                            if j.state is JobState.QUEUED
                        ]
                    },
                )
            return None
        return self._assigned(worker, reply)

    def _assigned(self, worker: WorkerPeer, reply: Any) -> Job:
        handle = reply.handle
        job = self.model.by_handle.get(handle)
        if job is None:
            raise Violation(
                FindingClass.JOB_MIXUP,
                "unknown-job",
                f"worker {worker.wid} was assigned {handle!r}, which nobody submitted",
            )
        if reply.function != job.function or reply.function not in worker.functions:
            raise Violation(
                FindingClass.JOB_MIXUP,
                "function",
                f"job {job.seq} ({job.function!r}) was assigned as {reply.function!r}"
                f" to worker {worker.wid}, which registered {sorted(worker.functions)!r}",
            )
        if reply.data != job.data:
            raise Violation(
                FindingClass.JOB_MIXUP,
                "data",
                f"job {job.seq} was assigned with {reply.data[:40]!r}; submitted {job.data[:40]!r}",
            )
        if isinstance(reply, events.JobAssignUniq | events.JobAssignAll) and (
            reply.unique != job.unique
        ):
            raise Violation(
                FindingClass.JOB_MIXUP,
                "unique",
                f"job {job.seq} was assigned with unique {reply.unique!r}"
                f" ({len(reply.unique)} bytes); it was submitted with {job.unique!r}"
                f" ({len(job.unique)} bytes)",
            )
        if isinstance(reply, events.JobAssignAll) and reply.reducer != (job.reducer or b""):
            raise Violation(
                FindingClass.JOB_MIXUP,
                "reducer",
                f"job {job.seq} was assigned with reducer {reply.reducer!r}, not {job.reducer!r}",
            )
        if job.finished or job.state is JobState.CANCELLED:
            raise Violation(
                FindingClass.DUPLICATE_JOB,
                f"after-{job.state.value}",
                f"job {job.seq} was handed out again after it was {job.state.value}",
            )
        if job.state is JobState.RUNNING and not job.requeue_pending:
            raise Violation(
                FindingClass.DUPLICATE_JOB,
                "while-running",
                f"job {job.seq} was assigned to worker {worker.wid} while worker"
                f" {job.holder} still holds it",
            )
        job.deliveries += 1
        if job.deliveries > job.allowed:
            raise Violation(
                FindingClass.DUPLICATE_JOB,
                "too-many-deliveries",
                f"job {job.seq} was delivered {job.deliveries} times; causes allow {job.allowed}",
            )
        job.state = JobState.RUNNING
        job.holder = worker.wid
        job.requeue_pending = False
        job.numerator = job.denominator = 0
        worker.held.append(handle)
        return job

    def _do_work(self, action: dict[str, Any]) -> None:
        worker = self._worker(action["worker"])
        if worker is None or not worker.held:
            return
        handle = worker.held[action["which"] % len(worker.held)]
        job = self.model.by_handle[handle]
        what = action["what"]
        if what == "complete":
            data = b"result-%d" % job.seq
            self._finish_job(worker, job, events.WorkComplete(handle, data), ("complete", data))
        elif what == "fail":
            self._finish_job(worker, job, events.WorkFail(handle), ("fail", b""))
        elif what == "exception":
            self._finish_job(
                worker, job, events.WorkException(handle, b"exc"), ("exception", b"exc")
            )
        else:
            if what == "status":
                event: Any = events.WorkStatus(handle, 1, 3)
                job.numerator, job.denominator = 1, 3
            elif what == "warning":
                event = events.WorkWarning(handle, b"warn")
            else:
                event = events.WorkData(handle, b"part")
            self._guard(type(event).__name__, worker.peer.send, event)
            self._work_errors(worker, job, self._sync(worker.peer, type(event).__name__))

    def _finish_job(
        self, worker: WorkerPeer, job: Job, event: Any, outcome: tuple[str, bytes]
    ) -> None:
        self._guard(type(event).__name__, worker.peer.send, event)
        worker.held.remove(job.handle)
        job.outcome = outcome
        job.state = JobState.DONE if outcome[0] == "complete" else JobState.FAILED
        job.holder = None
        self._work_errors(worker, job, self._sync(worker.peer, type(event).__name__))

    def _work_errors(self, worker: WorkerPeer, job: Job, errors: list[events.Error]) -> None:
        if errors and not job.cancelled:
            raise Violation(
                FindingClass.LOST_JOB,
                "running-job-forgotten",
                f"worker {worker.wid}'s report on job {job.seq}, which it holds, was refused"
                f" with ERROR {errors[0].code!r}: the server forgot a running job",
            )

    def _do_drop_worker(self, action: dict[str, Any]) -> None:
        worker = self._worker(action["worker"])
        if worker is None:
            return
        how = action["how"]
        if how == "mid" and worker.held:
            packet = worker.peer.conn.send(events.WorkComplete(worker.held[0], b"never"))
            with contextlib.suppress(PeerClosed, PeerTimeout, OSError):
                worker.peer.write(packet[: len(packet) // 2])
        worker.peer.close("rst" if how == "rst" else "fin")
        self.workers.remove(worker)
        requeued = []
        for handle in worker.held:
            job = self.model.by_handle[handle]
            if job.cancelled:
                job.state = JobState.CANCELLED
                continue
            job.state = JobState.QUEUED
            job.holder = None
            job.requeue_pending = True
            job.allowed += 1
            requeued.append(job)
        if self._await_gone(worker.client_id):
            for job in requeued:
                job.requeue_pending = False
            self._check_wakeup(requeued, "jobs requeued after a worker left")
        else:
            for fn, count in worker.functions.items():
                self.ghosts[fn] = self.ghosts.get(fn, 0) + count

    def _do_drop_client(self, action: dict[str, Any]) -> None:
        client = self._client(action["client"])
        if client is None:
            return
        client.peer.close("rst" if action["how"] == "rst" else "fin")
        self.clients.remove(client)
        for job in self.model.jobs:
            if client.cid in job.clients:
                del job.clients[client.cid]
                if not job.clients and not job.background and not job.bg_joined and job.active:
                    job.in_doubt = True

    def _do_option(self, action: dict[str, Any]) -> None:
        client = self._client(action["client"])
        if client is None:
            return
        reply = self._request(
            client.peer, events.OptionReq(b"exceptions"), (events.OptionRes,), "OPTION_REQ"
        )
        if isinstance(reply, events.OptionRes):
            client.exceptions = True

    def _job(self, index: int) -> Job | None:
        return self.model.jobs[index % len(self.model.jobs)] if self.model.jobs else None

    def _do_get_status(self, action: dict[str, Any]) -> None:
        client, job = self._client(action["client"]), self._job(action["job"])
        if client is None or job is None:
            return
        reply = self._request(
            client.peer, events.GetStatus(job.handle), (events.StatusRes,), "GET_STATUS"
        )
        if isinstance(reply, events.Error):
            return
        problem = None
        if job.finished and reply.known and not job.cancelled:
            problem = "finished job still reported as known"
        elif job.certain and not job.requeue_pending and not job.cancelled:
            if not reply.known:
                problem = f"{job.state.value} job reported as unknown"
            elif reply.running != (job.state is JobState.RUNNING):
                problem = f"{job.state.value} job reported with running={reply.running}"
            elif job.state is JobState.RUNNING and (
                (reply.numerator, reply.denominator) != (job.numerator, job.denominator)
            ):
                problem = (
                    f"progress {reply.numerator}/{reply.denominator}, last WORK_STATUS was"
                    f" {job.numerator}/{job.denominator}"
                )
        if problem:
            raise Violation(
                FindingClass.STATUS_MISMATCH,
                "get-status",
                f"GET_STATUS of job {job.seq}: {problem}",
            )

    def _do_get_status_unique(self, action: dict[str, Any]) -> None:
        client, job = self._client(action["client"]), self._job(action["job"])
        if client is None or job is None or not job.coalesces:
            return
        reply = self._request(
            client.peer,
            events.GetStatusUnique(job.unique),
            (events.StatusResUnique,),
            "GET_STATUS_UNIQUE",
        )
        if isinstance(reply, events.Error):
            return
        same = [j for j in self.model.jobs if j.unique == job.unique]
        live = [j for j in same if j.certain and not j.cancelled]
        unsure = [j for j in same if j.active and j not in live]
        if live and not reply.known:
            raise Violation(
                FindingClass.STATUS_MISMATCH,
                "get-status-unique",
                f"GET_STATUS_UNIQUE {job.unique!r} ({len(job.unique)} bytes) says unknown,"
                f" but job {live[0].seq} with that unique is {live[0].state.value}",
            )
        if not live and not unsure and reply.known:
            raise Violation(
                FindingClass.STATUS_MISMATCH,
                "get-status-unique-finished",
                f"GET_STATUS_UNIQUE {job.unique!r} says known, but every job with it finished",
            )

    # ------------------------------------------------------------------- teardown

    def finish(self) -> None:
        """End-of-run invariants: every result delivered, every queued job drainable."""
        self.pump()
        self._await_results()
        drained = self._drain()
        self._await_results()
        for job in self.model.jobs:
            if job in drained or not job.due():
                continue
            if job.state is JobState.QUEUED and not job.in_doubt and not job.dropped:
                raise Violation(
                    FindingClass.LOST_JOB,
                    "never-delivered",
                    f"job {job.seq} ({job.function!r}, priority {Priority(job.priority).name},"
                    f" unique {job.unique[:40]!r},"
                    f" {'background' if job.background else 'foreground'})"
                    " was acknowledged but a worker draining the queue never got it",
                    {"jobs": self._job_table(job.function)},
                )
        self._dropped_without_word(drained)

    def _dropped_without_word(self, drained: list[Job]) -> None:
        """``drop function`` may discard queued jobs, but their waiting clients must
        hear of it (WORK_FAIL); otherwise they wait forever."""
        waiting = {c.cid: c for c in self.clients}
        deadline = time.monotonic() + self.t.probe
        for job in self.model.jobs:
            if not job.dropped or job in drained or job.finished:
                continue
            for cid in job.clients:
                client = waiting.get(cid)
                if client is None:
                    continue
                while not client.results.get(job.handle) and time.monotonic() < deadline:
                    self._guard("reading a client", client.peer.poll, 0.02)
                    self._client_events(client)
                if not client.results.get(job.handle):
                    raise Violation(
                        FindingClass.LOST_JOB,
                        "dropped-without-word",
                        f"drop function discarded job {job.seq} ({job.function!r}); its client"
                        f" {cid} was never told (no WORK_FAIL) and will wait forever",
                    )

    def _await_results(self) -> None:
        deadline = time.monotonic() + self.t.probe
        while True:
            missing = self._missing_results()
            if not missing:
                return
            if time.monotonic() >= deadline:
                client, job, why = missing[0]
                raise Violation(
                    FindingClass.LOST_JOB,
                    "result-never-delivered",
                    f"client {client.cid} never got the result of job {job.seq} ({why})",
                )
            for client in self.clients:
                self._guard("reading a client", client.peer.poll, 0.02)
                self._client_events(client)

    def _missing_results(self) -> list[tuple[ClientPeer, Job, str]]:
        out = []
        for client in self.clients:
            for job in self.model.jobs:
                if client.cid not in job.clients or client.results.get(job.handle):
                    continue
                if job.outcome is not None:
                    out.append((client, job, f"its worker sent {job.outcome[0]}"))
                elif job.cancelled and job.state is JobState.CANCELLED:
                    out.append((client, job, "it was cancelled"))
        return out

    def _drain(self) -> list[Job]:
        """A fresh worker takes every job it can and completes it."""
        drained: list[Job] = []
        self._ids += 1
        worker = WorkerPeer(self._ids, self._peer("drain worker"), self.prefix + b"drain")
        self.workers.append(worker)
        self.ids.add(worker.client_id)
        self._guard("SET_CLIENT_ID", worker.peer.send, events.SetClientId(worker.client_id))
        for fn in self.functions:
            self._guard("CAN_DO", worker.peer.send, events.CanDo(fn))
            worker.functions[fn] = 1
        self._sync(worker.peer, "CAN_DO")
        retried = False
        for _ in range(200):
            job = self._grab_for_drain(worker)
            if job is None:
                pending = [j for j in self.model.jobs if j.requeue_pending and j.certain]
                if pending and not retried:
                    retried = True
                    time.sleep(0.3)
                    continue
                break
            drained.append(job)
            data = b"result-%d" % job.seq
            self._finish_job(worker, job, events.WorkComplete(job.handle, data), ("complete", data))
        return drained

    def _grab_for_drain(self, worker: WorkerPeer) -> Job | None:
        what = "GRAB_JOB_ALL (drain)"
        reply = self._request(worker.peer, events.GrabJobAll(), (*_ASSIGN, events.NoJob), what)
        if isinstance(reply, events.NoJob | events.Error):
            return None
        return self._assigned(worker, reply)

    def close(self) -> None:
        for client in self.clients:
            client.peer.close("rst")
        for worker in self.workers:
            worker.peer.close("rst")
        if self._admin is not None:
            self._admin.peer.close("rst")
        self.clients.clear()
        self.workers.clear()
