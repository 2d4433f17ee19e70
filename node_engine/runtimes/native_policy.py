"""What a node lets native tasks do: the user they run as, the executables and working
directories they may use, the environment names they may set (docs/node-engine.md,
"Native tasks: security").

An operator token reaches every node, so the node is the authority on what a native
task may do there; the cluster and the root cannot know a node's lists and do not check
them. A deploy the policy refuses raises `PolicyRefusal` (a `RuntimeFailure`): the
instance goes FAILED with a reason that names the setting, and the refusal is counted
by setting (`NativeGuard.refusals`) and logged.

- run-as user (`native_run_as`): when the engine runs as root, each task runs as this
  user (its primary group and supplementary groups; root's own groups are dropped). The
  value ``root`` keeps tasks as root, an explicit opt-in that is logged as a warning. An
  engine that is not root cannot switch users: its tasks run as the engine's own user,
  which the start log says. A configured user that does not exist makes native deploys
  fail (looked up again at each deploy, so creating the user needs no restart).
- commands (`native_allowed_commands`): globs (fnmatch, ``*`` matches ``/`` too) over the
  executable's absolute path, as the engine resolved it (the task's PATH applies) and
  after symlinks (realpath); either may match. ``*`` allows any executable. Allowing a
  shell or an interpreter allows whatever it is told to run.
- working directories (`native_allowed_workdirs`): absolute path prefixes compared on
  whole path components after realpath on both sides, so ``..`` and symlinks cannot lead
  out of them. The task's own directory (`<state>/native/work/<instance>`) is always
  allowed and is the default.
- environment (`native_allow_env_overrides`): the names the dynamic loader and libc
  trust (``LD_*``, ``GCONV_PATH``, ...) and ``PATH`` are dropped from a job's
  environment unless listed here (names or globs such as ``LD_*``); the task gets
  the fixed minimal PATH of the runtime. Dropped names are logged, counted and written
  at the top of the task's output.
"""

from __future__ import annotations

import fnmatch
import grp
import logging
import os
import pwd
import stat
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node_engine.runtimes.base import RuntimeFailure

log = logging.getLogger(__name__)

DEFAULT_RUN_AS = "edge-task"
"""The unprivileged system user scripts/setup.sh creates for native tasks."""

ROOT = "root"

GUARDED_ENV_PREFIXES = ("LD_",)
GUARDED_ENV_NAMES = frozenset(
    {"PATH", "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCPATH", "MALLOC_TRACE", "NLSPATH"}
)
"""Environment names a job may not set unless the node allows them: the loader's
``LD_*`` (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...), ``PATH``, and the libc variables
that load code or files by path (those glibc ignores for setuid programs)."""


NO_WORKDIRS = "none: only the task's own directory"


class PolicyRefusal(RuntimeFailure):
    """A deploy the node's native policy does not allow; `setting` names the setting."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(reason)
        self.setting = setting


@dataclass(frozen=True)
class RunAs:
    """A resolved identity to run tasks as."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str

    def label(self) -> str:
        """``name (uid N, gid M)``, for logs and reasons."""
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def _lookup_group(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise LookupError(f"group {value!r} does not exist") from None


def resolve_run_as(value: str) -> RunAs:
    """The identity `value` names: ``user``, ``user:group``, ``uid`` or ``uid:gid``.

    A user name takes its primary group and supplementary groups from the system; a bare
    uid with a passwd entry too; a uid without one gets gid = uid (or the given gid) and
    no supplementary groups. LookupError (naming the user) when a name does not exist.
    """
    user, _, group = value.partition(":")
    if user.isdigit():
        uid = int(user)
        try:
            entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
        except KeyError:
            entry = None
    else:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise LookupError(f"user {user!r} does not exist") from None
        uid = entry.pw_uid
    default_gid = entry.pw_gid if entry is not None else uid
    gid = _lookup_group(group) if group else default_gid
    groups: tuple[int, ...] = (gid,)
    if entry is not None:
        groups = tuple(dict.fromkeys([gid, *os.getgrouplist(entry.pw_name, gid)]))
    name = entry.pw_name if entry is not None else str(uid)
    return RunAs(uid=uid, gid=gid, groups=groups, name=name)


def guarded_env_name(name: str) -> bool:
    """Whether a job may set `name` only when the node allows it."""
    return name in GUARDED_ENV_NAMES or name.startswith(GUARDED_ENV_PREFIXES)


def within(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or below it, on whole components (both already real)."""
    prefix = prefix.rstrip("/") or "/"
    return path == prefix or path.startswith(prefix if prefix == "/" else prefix + "/")


def may_access(st: os.stat_result, who: RunAs, bits: int) -> bool:
    """Whether `who` has the permission `bits` (a mix of 4 r, 2 w, 1 x) on a file with
    status `st`, by its owner/group/other mode bits (ACLs are not read)."""
    if who.uid == 0:
        return True
    if st.st_uid == who.uid:
        mode = (st.st_mode >> 6) & 7
    elif st.st_gid in who.groups:
        mode = (st.st_mode >> 3) & 7
    else:
        mode = st.st_mode & 7
    return mode & bits == bits


def _search_chain(path: str, who: RunAs) -> str | None:
    """The first directory above `path` that `who` cannot search (x), if any."""
    parts = os.path.dirname(path).split("/")
    current = ""
    for part in parts[1:]:
        current += "/" + part
        try:
            st = os.stat(current)
        except OSError:
            return current
        if not may_access(st, who, 1):
            return current
    return None


class NativeGuard:
    """The native policy of one node, resolved against the running engine.

    Built once at start (`describe()` gives the start log lines); `check_*` and
    `filter_env` run at every deploy. The defaults of the constructor are those of a
    library caller (tests, ``edgectl local down``): tasks run as the calling process,
    any command, any working directory; the engine's settings default to
    ``native_run_as=edge-task`` and only the task's own working directory.
    """

    def __init__(
        self,
        run_as: str | None = None,
        *,
        allowed_commands: Iterable[str] = ("*",),
        allowed_workdirs: Iterable[str] | None = None,
        allow_env: Iterable[str] = (),
        euid: int | None = None,
    ) -> None:
        """`run_as` None: run as the calling process, without a note; `allowed_workdirs`
        None: any directory."""
        self.run_as_setting = run_as
        self.allowed_commands = tuple(allowed_commands)
        self.allowed_workdirs = None if allowed_workdirs is None else tuple(allowed_workdirs)
        self.allow_env = tuple(allow_env)
        self.euid = os.geteuid() if euid is None else euid
        self.refusals: Counter[str] = Counter()
        """Refused deploys (and dropped environment names) so far, by setting."""
        self.target: RunAs | None = None
        """The identity tasks are switched to; None: they run as the engine."""
        self.error: str | None = None
        """Why native deploys fail (the configured user does not exist)."""
        self._resolve()

    # ----- identity -----

    @property
    def switches(self) -> bool:
        """Whether tasks run as another user than the engine."""
        return self.target is not None

    def _resolve(self) -> None:
        value = self.run_as_setting
        if value is None or self.euid != 0 or value == ROOT:
            self.target, self.error = None, None
            return
        try:
            target = resolve_run_as(value)
        except LookupError as exc:
            self.target = None
            self.error = (
                f"native_run_as: {exc}: native tasks cannot run (create the user, "
                "e.g. with scripts/setup.sh, or set another one)"
            )
            return
        self.error = None
        self.target = None if target.uid == 0 and target.gid == 0 else target

    def describe(self) -> list[tuple[int, str]]:
        """(log level, message) lines for the engine's start log."""
        out: list[tuple[int, str]] = []
        value = self.run_as_setting
        if self.error:
            out.append((logging.ERROR, self.error))
        elif value is not None and self.euid != 0:
            me = _name_of(self.euid)
            out.append(
                (
                    logging.INFO,
                    f"native tasks run as the engine's own user {me} (uid {self.euid}): "
                    f"the engine is not root and cannot switch to native_run_as={value}",
                )
            )
        elif value == ROOT or (value is not None and self.target is None):
            out.append(
                (
                    logging.WARNING,
                    f"native tasks run as root (native_run_as={value}): whoever can submit "
                    "a job can run anything as root on this node",
                )
            )
        elif self.target is not None:
            out.append((logging.INFO, f"native tasks run as {self.target.label()}"))
        if value is not None:
            commands = "any executable" if "*" in self.allowed_commands else self.allowed_commands
            workdirs = self.allowed_workdirs or "only each task's own directory"
            env = self.allow_env or "none (LD_*, PATH, ... are dropped)"
            out.append(
                (
                    logging.INFO,
                    f"native policy: commands {commands}; working directories {workdirs}; "
                    f"environment overrides {env}",
                )
            )
        return out

    def identity(self) -> RunAs | None:
        """The identity of the next task (None: the engine's); PolicyRefusal when the
        configured user does not exist (looked up again, so creating it is enough)."""
        if self.error:
            self._resolve()
            if self.error:
                self.refuse("native_run_as", self.error)
        return self.target

    # ----- checks -----

    def refuse(self, setting: str, reason: str) -> None:
        """Count, log and raise a refusal."""
        self.refusals[setting] += 1
        log.warning(
            "native deploy refused: %s (refused so far by setting: %s)",
            reason,
            dict(self.refusals),
        )
        raise PolicyRefusal(setting, reason)

    def check_command(self, exe: str, who: RunAs | None) -> None:
        """Refuse an executable outside `native_allowed_commands`, or one the run-as user
        cannot reach or execute. `exe` is absolute."""
        path = os.path.abspath(exe)
        real = os.path.realpath(path)
        if "*" not in self.allowed_commands and not any(
            fnmatch.fnmatchcase(p, pattern)
            for pattern in self.allowed_commands
            for p in (path, real)
        ):
            shown = path if real == path else f"{path} (-> {real})"
            self.refuse(
                "native_allowed_commands",
                f"command {shown} is not allowed on this node "
                f"(native_allowed_commands: {', '.join(self.allowed_commands) or 'none'})",
            )
        if who is None:
            return
        for p in dict.fromkeys((path, real)):
            blocked = _search_chain(p, who)
            if blocked is not None:
                self.refuse(
                    "native_run_as",
                    f"command {path}: directory {blocked} is not accessible to the run-as "
                    f"user {who.label()}",
                )
        try:
            st = os.stat(real)
        except OSError as exc:
            self.refuse("native_allowed_commands", f"command {path}: {exc.strerror}")
        if not may_access(st, who, 1):
            self.refuse(
                "native_run_as",
                f"command {path} is not executable by the run-as user {who.label()}",
            )

    def check_workdir(self, workdir: str, own: str, who: RunAs | None) -> str:
        """The real path of a requested working directory, or a refusal: outside
        `native_allowed_workdirs` (after realpath, so ``..`` and symlinks cannot escape),
        not a directory, or not searchable by the run-as user. `own` is the task's own
        directory, always allowed."""
        real = os.path.realpath(workdir)
        allowed = [own, *(self.allowed_workdirs or ())]
        if self.allowed_workdirs is not None and not any(
            within(real, os.path.realpath(prefix)) for prefix in allowed
        ):
            shown = workdir if real == workdir else f"{workdir} (resolves to {real})"
            self.refuse(
                "native_allowed_workdirs",
                f"working directory {shown} is outside native_allowed_workdirs "
                f"({', '.join(self.allowed_workdirs) or NO_WORKDIRS})",
            )
        try:
            st = os.stat(real)
        except OSError:
            raise RuntimeFailure(f"working directory does not exist: {workdir}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeFailure(f"working directory is not a directory: {workdir}")
        if who is not None and not may_access(st, who, 1):
            self.refuse(
                "native_run_as",
                f"working directory {workdir} is not accessible to the run-as user {who.label()}",
            )
        return real

    def filter_env(self, env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """The job's environment without the guarded names the node does not allow, and
        the names dropped (counted under `native_allow_env_overrides`)."""
        kept: dict[str, str] = {}
        dropped: list[str] = []
        for name, value in env.items():
            if guarded_env_name(name) and not any(
                fnmatch.fnmatchcase(name, pattern) for pattern in self.allow_env
            ):
                dropped.append(name)
            else:
                kept[name] = value
        if dropped:
            self.refusals["native_allow_env_overrides"] += 1
            log.warning(
                "native task environment: dropped %s (not in native_allow_env_overrides)",
                ", ".join(dropped),
            )
        return kept, dropped


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


__all__ = [
    "DEFAULT_RUN_AS",
    "GUARDED_ENV_NAMES",
    "GUARDED_ENV_PREFIXES",
    "NativeGuard",
    "PolicyRefusal",
    "RunAs",
    "guarded_env_name",
    "may_access",
    "resolve_run_as",
    "within",
]
