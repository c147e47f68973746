"""zcell.errors: the exception tree, and remote errors that mirror built-in exceptions.

Pure tests: no sockets, no nodes. What a caller sees when a remote handler raises is
built by ``remote_error(type_name, message, traceback, ancestor)`` from the four
strings of an ERROR reply (see docs/protocol.md), with ``ancestor`` computed on the
hosting side by ``builtin_ancestor``.
"""

from __future__ import annotations

import asyncio
import builtins
import configparser
import copy
import json
import pickle
import socket
import subprocess
import traceback

import pytest

import zcell
from zcell import errors
from zcell.errors import (
    ActorStopped,
    CallTimeout,
    NodeDown,
    NodeStopped,
    NoNodeForType,
    NoReplyError,
    NoSuchActor,
    NoSuchMethod,
    ProtocolError,
    RemoteError,
    SerializationError,
    ZcellError,
    builtin_ancestor,
    remote_error,
)

MESSAGE = "the remote message"
REMOTE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/actors.py", line 12, in lookup\n'
    "    return self.table[key]\n"
    "KeyError: 'x'\n"
)

#: Built-ins that have control-flow meaning in the caller's process.
NEVER_MIRRORED = [
    "GeneratorExit",
    "KeyboardInterrupt",
    "StopAsyncIteration",
    "StopIteration",
    "SystemExit",
]
#: Every RemoteError already is an Exception; these roots add nothing.
ROOTS = ["BaseException", "Exception"]
BUILTIN_EXCEPTIONS = sorted(
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
)
MIRRORED = [name for name in BUILTIN_EXCEPTIONS if name not in NEVER_MIRRORED + ROOTS]

#: traceback's SyntaxError formatter prints ``.msg`` (None here), not ``str()``.
_SYNTAX_FAMILY = {"SyntaxError", "IndentationError", "TabError"}


def mirror(ancestor: str, type_name: str | None = None) -> RemoteError:
    return remote_error(type_name or ancestor, MESSAGE, REMOTE_TRACEBACK, ancestor)


def test_the_builtin_exception_list_is_complete_enough_to_mean_something() -> None:
    assert len(BUILTIN_EXCEPTIONS) > 60
    assert {"KeyError", "OSError", "ExceptionGroup", "TimeoutError"} <= set(MIRRORED)


# -- every built-in, one case each -------------------------------------------------


@pytest.mark.parametrize("name", MIRRORED)
def test_a_remote_builtin_error_is_also_an_instance_of_that_builtin(name: str) -> None:
    builtin = getattr(builtins, name)
    err = mirror(name)
    assert isinstance(err, RemoteError)
    assert isinstance(err, ZcellError)
    assert isinstance(err, builtin)
    assert (err.type_name, err.remote_message, err.remote_traceback) == (
        name,
        MESSAGE,
        REMOTE_TRACEBACK,
    )


@pytest.mark.parametrize("name", MIRRORED)
def test_a_remote_builtin_error_is_caught_by_except_builtin(name: str) -> None:
    builtin = getattr(builtins, name)
    err = mirror(name)
    try:
        raise err
    except builtin as caught:
        assert caught is err
    with pytest.raises(RemoteError):
        raise err


@pytest.mark.parametrize("name", BUILTIN_EXCEPTIONS)
def test_str_of_a_remote_error_has_the_type_message_and_remote_traceback(name: str) -> None:
    text = str(mirror(name, type_name=f"app.errors.{name}"))
    assert text.startswith(f"app.errors.{name}: {MESSAGE}")
    assert "Remote traceback:" in text
    assert "return self.table[key]" in text


@pytest.mark.parametrize(
    "name",
    [name for name in MIRRORED],
)
def test_a_printed_remote_error_shows_the_message_and_remote_traceback(name: str) -> None:
    # What a user sees when the error is not caught, or in logging.exception().
    try:
        raise mirror(name)
    except BaseException as caught:
        printed = "".join(traceback.format_exception(caught))
    assert MESSAGE in printed
    assert "return self.table[key]" in printed


@pytest.mark.parametrize("name", NEVER_MIRRORED)
def test_control_flow_builtins_are_never_mirrored(name: str) -> None:
    err = mirror(name)
    assert type(err) is RemoteError
    assert not isinstance(err, getattr(builtins, name))
    assert MESSAGE in str(err)
    try:
        raise err
    except Exception as caught:  # an ordinary error in the caller, nothing more
        assert caught is err


@pytest.mark.parametrize("name", ROOTS)
def test_the_root_builtins_give_a_plain_remote_error(name: str) -> None:
    err = mirror(name)
    assert type(err) is RemoteError
    assert MESSAGE in str(err)


@pytest.mark.parametrize(
    "ancestor",
    ["", "NoSuchBuiltin", "print", "object", "int", "__import__", "zcell.errors.ZcellError"],
)
def test_an_ancestor_name_that_is_not_a_builtin_exception_gives_a_plain_remote_error(
    ancestor: str,
) -> None:
    # The ancestor name comes off the wire: it must never pick anything else.
    err = remote_error("app.Weird", MESSAGE, "", ancestor)
    assert type(err) is RemoteError
    assert str(err) == f"app.Weird: {MESSAGE}"


def test_the_same_ancestor_gives_the_same_mirror_class() -> None:
    assert type(mirror("KeyError")) is type(mirror("KeyError", type_name="app.Missing"))


@pytest.mark.parametrize("alias", ["IOError", "EnvironmentError"])
def test_aliases_of_oserror_mirror_oserror(alias: str) -> None:
    assert isinstance(mirror(alias), OSError)


def test_a_remote_error_without_traceback_has_no_traceback_section() -> None:
    err = remote_error("ValueError", "bad value", "", "ValueError")
    assert str(err) == "ValueError: bad value"


def test_a_plain_remote_error_survives_pickle_and_copy() -> None:
    err = remote_error("app.Boom", MESSAGE, REMOTE_TRACEBACK, "Exception")
    for clone in (pickle.loads(pickle.dumps(err)), copy.copy(err)):
        assert type(clone) is RemoteError
        assert (clone.type_name, clone.remote_message, clone.remote_traceback) == (
            "app.Boom",
            MESSAGE,
            REMOTE_TRACEBACK,
        )


@pytest.mark.parametrize("clone", [pickle.dumps, copy.copy], ids=["pickle", "copy"])
def test_a_mirrored_remote_error_keeps_its_builtin_base_through_pickle_and_copy(
    clone: object,
) -> None:
    err = mirror("KeyError")
    result = clone(err)  # type: ignore[operator]
    if isinstance(result, bytes):
        result = pickle.loads(result)
    assert isinstance(result, KeyError)


# -- builtin_ancestor on the hosting side ------------------------------------------


class MissingRecord(KeyError):
    """A user error deriving from KeyError."""


class DiskFull(OSError):
    """A user error deriving from OSError."""


class Mixin:
    pass


class MixedLookup(Mixin, LookupError):
    """A mixin ahead of the built-in base."""


class TwoBuiltins(ValueError, KeyError):
    """Only the nearest built-in ancestor travels."""


@pytest.mark.parametrize(
    ("exc_type", "ancestor"),
    [
        (json.JSONDecodeError, "ValueError"),
        (subprocess.CalledProcessError, "Exception"),
        (subprocess.TimeoutExpired, "Exception"),
        (socket.timeout, "TimeoutError"),
        (socket.gaierror, "OSError"),
        (UnicodeDecodeError, "UnicodeDecodeError"),
        (configparser.NoSectionError, "Exception"),
        (configparser.DuplicateOptionError, "Exception"),
        (configparser.InterpolationMissingOptionError, "Exception"),
        (asyncio.CancelledError, "BaseException"),
        (asyncio.TimeoutError, "TimeoutError"),
        (asyncio.IncompleteReadError, "EOFError"),
        (MissingRecord, "KeyError"),
        (DiskFull, "OSError"),
        (MixedLookup, "LookupError"),
        (TwoBuiltins, "ValueError"),
        (NoSuchActor, "KeyError"),
        (CallTimeout, "TimeoutError"),
        (ZcellError, "Exception"),
        (KeyError, "KeyError"),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{v.__module__}.{v.__qualname__}",
)
def test_builtin_ancestor_is_the_nearest_builtin_in_the_mro(
    exc_type: type[BaseException], ancestor: str
) -> None:
    assert builtin_ancestor(exc_type) == ancestor


def roundtrip(exc: BaseException) -> RemoteError:
    """What the caller gets for ``exc`` raised by a remote handler."""
    cls = type(exc)
    return remote_error(
        f"{cls.__module__}.{cls.__qualname__}", str(exc), "tb", builtin_ancestor(cls)
    )


def test_a_remote_json_decode_error_is_caught_by_except_value_error() -> None:
    try:
        json.loads("{")
    except json.JSONDecodeError as exc:
        err = roundtrip(exc)
    with pytest.raises(ValueError, match="Expecting property name"):
        raise err
    assert err.type_name == "json.decoder.JSONDecodeError"
    # Not the stdlib class itself: the caller need not have the remote code.
    assert not isinstance(err, json.JSONDecodeError)


def test_a_remote_called_process_error_is_a_plain_remote_error() -> None:
    err = roundtrip(subprocess.CalledProcessError(2, ["false"]))
    assert type(err) is RemoteError
    assert "returned non-zero exit status 2" in str(err)


def test_a_remote_socket_timeout_is_a_timeout_error_but_not_a_call_timeout() -> None:
    err = roundtrip(socket.timeout("timed out"))  # noqa: UP041 - the name users write
    assert isinstance(err, TimeoutError)
    assert isinstance(err, OSError)
    # Our own call did not time out: the remote handler's socket did.
    assert not isinstance(err, CallTimeout)


def test_a_remote_unicode_decode_error_is_caught_as_unicode_and_value_error() -> None:
    try:
        b"\xff".decode("utf-8")
    except UnicodeDecodeError as exc:
        err = roundtrip(exc)
    assert isinstance(err, UnicodeDecodeError)
    assert isinstance(err, UnicodeError)
    assert isinstance(err, ValueError)
    assert "invalid start byte" in str(err)


def test_a_remote_configparser_error_is_a_plain_remote_error() -> None:
    err = roundtrip(configparser.NoSectionError("db"))
    assert type(err) is RemoteError
    assert err.type_name == "configparser.NoSectionError"
    assert "No section: 'db'" in str(err)


def test_a_remote_cancelled_error_does_not_cancel_the_caller() -> None:
    # CancelledError is a BaseException: mirroring it would cancel the caller's
    # own task, and `except Exception` would miss it. It arrives as a plain error.
    err = roundtrip(asyncio.CancelledError())
    assert type(err) is RemoteError
    assert not isinstance(err, asyncio.CancelledError)
    assert isinstance(err, Exception)


def test_a_user_key_error_subclass_is_caught_by_except_key_error() -> None:
    err = roundtrip(MissingRecord("user 42"))
    with pytest.raises(KeyError):
        raise err
    assert err.type_name == f"{__name__}.MissingRecord"


def test_a_user_oserror_subclass_is_caught_by_except_oserror() -> None:
    err = roundtrip(DiskFull(28, "No space left on device"))
    with pytest.raises(OSError):
        raise err
    assert "No space left on device" in str(err)


# -- the error tree ------------------------------------------------------------------

#: Each class once (``NoReplyError`` is an alias of ``CallTimeout``).
ERROR_CLASSES = list(
    dict.fromkeys(
        getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)
    )
)


def test_zcell_errors_all_lists_every_class_and_the_helpers() -> None:
    assert set(errors.__all__) == {
        "ZcellError",
        "RemoteError",
        "NoSuchMethod",
        "CallTimeout",
        "NoReplyError",
        "NodeDown",
        "NoSuchActor",
        "ActorStopped",
        "NoNodeForType",
        "ProtocolError",
        "SerializationError",
        "NodeStopped",
        "NameTaken",
        "IncompatibleProtocol",
        "remote_error",
        "mirrored",
        "builtin_ancestor",
    }
    assert callable(errors.remote_error) and callable(errors.builtin_ancestor)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_derives_from_zcell_error(cls: type) -> None:
    assert issubclass(cls, ZcellError)
    with pytest.raises(ZcellError):
        raise cls("x")


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_has_its_own_docstring(cls: type) -> None:
    doc = vars(cls).get("__doc__")
    assert doc and len(doc.strip()) > 40, f"{cls.__name__} needs a docstring"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (NoSuchActor, KeyError),
        (CallTimeout, TimeoutError),
        (NodeDown, ConnectionError),
        (NoSuchMethod, AttributeError),
        (SerializationError, TypeError),
    ],
    ids=lambda c: c.__name__,
)
def test_errors_with_an_obvious_builtin_meaning_are_that_builtin(
    cls: type[ZcellError], builtin: type[Exception]
) -> None:
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("x")


@pytest.mark.parametrize(
    "cls",
    [RemoteError, ActorStopped, NoNodeForType, ProtocolError, NodeStopped, ZcellError],
    ids=lambda c: c.__name__,
)
def test_the_other_errors_are_no_builtin_besides_exception(cls: type[ZcellError]) -> None:
    # An `except KeyError:` around unrelated code must not swallow them.
    assert builtin_ancestor(cls) == "Exception"


def test_no_reply_error_is_call_timeout() -> None:
    assert NoReplyError is CallTimeout


def test_no_such_actor_reads_like_a_sentence_not_a_key_repr() -> None:
    assert str(NoSuchActor("no actor abc in the mesh")) == "no actor abc in the mesh"
    assert str(NoSuchActor()) == "no such actor"


# -- the public surface ----------------------------------------------------------------

#: The public names API.md lists (sections 1-5), and TASKS.md's (sections 1-4).
API_NAMES = {
    # 1. Defining actors; 3. Talking to actors
    "Actor",
    "Next",
    "ActorProxy",
    "AsyncResult",
    "first_reply",
    "forward",
    "stop_forward",
    # 2. Nodes
    "Node",
    # 5. Errors
    "ZcellError",
    "RemoteError",
    "NoSuchMethod",
    "CallTimeout",
    "NoReplyError",
    "NodeDown",
    "NoSuchActor",
    "ActorStopped",
    "NoNodeForType",
    "ProtocolError",
    "SerializationError",
    "NodeStopped",
    "NameTaken",
    "IncompatibleProtocol",  # issue 14: a node of another protocol major
    # TASKS.md 1-4 (issue 15): the app, results, the task layer's errors
    "App",
    "TaskResult",
    "TaskError",
    "NotRegistered",
    "UnknownSetting",
    "SettingLocked",
    "TaskPendingFull",
    "WorkerLostError",
    "TaskRevokedError",
    "TaskTimeout",
    "Retry",
    "MaxRetriesExceededError",
    "SoftTimeLimitExceeded",
    "TimeLimitExceeded",
    "NoBrokerNeeded",
    # TASKS.md 5 (issue 16): the canvas
    "signature",
    "chain",
    "group",
    "chord",
    "chunks",
    "GroupResult",
    "ChordError",
}


def test_zcell_exports_exactly_the_names_api_md_lists() -> None:
    assert set(zcell.__all__) == API_NAMES
    assert len(zcell.__all__) == len(set(zcell.__all__))


@pytest.mark.parametrize("name", sorted(API_NAMES))
def test_every_exported_name_exists(name: str) -> None:
    assert getattr(zcell, name) is not None


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_re_exported_from_zcell(cls: type) -> None:
    assert getattr(zcell, cls.__name__) is cls
