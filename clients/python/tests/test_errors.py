"""One exception class per wire error code, kept in step with the protocol crate."""

from __future__ import annotations

import re
from typing import List

import lockd
from lockd.errors import error_from_wire
from helpers import REPO


def wire_codes() -> List[str]:
    source = (REPO / "crates" / "protocol" / "src" / "error.rs").read_text()
    return re.findall(r'^\s*[A-Za-z]+ = "([a-z_]+)":', source, re.M)


def test_every_wire_code_has_its_class() -> None:
    codes = wire_codes()
    assert len(codes) >= 16
    for code in codes:
        error = error_from_wire({"code": code, "message": f"the {code} message"})
        assert type(error) is not lockd.ServerError, f"no class for {code}"
        assert isinstance(error, lockd.ServerError) and isinstance(error, lockd.LockdError)
        assert error.code == code
        assert error.message == f"the {code} message" and str(error) == error.message
        assert getattr(lockd, type(error).__name__) is type(error), "exported from lockd"


def test_not_leader_carries_the_leader_and_unknown_codes_still_raise() -> None:
    error = error_from_wire({"code": "not_leader", "message": "m", "leader": "10.0.0.1:5555"})
    assert isinstance(error, lockd.NotLeader) and error.leader == "10.0.0.1:5555"
    future = error_from_wire({"code": "from_the_future", "message": "new"})
    assert isinstance(future, lockd.ServerError) and future.code == "from_the_future"
    assert isinstance(error_from_wire("junk"), lockd.ProtocolError)
