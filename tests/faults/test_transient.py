"""Which database errors a worker waits out (``worker.transient``), and for how long."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from worker import transient
from worker.transient import is_transient, retrying


def operational() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("terminating connection due to administrator command"))


class TestIsTransient:
    @pytest.mark.parametrize(
        "error",
        [operational(), InterfaceError("SELECT 1", {}, Exception("connection already closed"))],
    )
    def test_lost_connections_pass(self, error: Exception) -> None:
        assert is_transient(error)

    def test_found_through_the_cause(self) -> None:
        wrapped = RuntimeError("a callback failed")
        wrapped.__cause__ = operational()
        assert is_transient(wrapped)

    @pytest.mark.parametrize(
        "error", [IntegrityError("INSERT", {}, Exception("duplicate key")), ValueError("bad value")]
    )
    def test_other_errors_do_not(self, error: Exception) -> None:
        assert not is_transient(error)


class TestRetrying:
    @pytest.fixture(autouse=True)
    def pauses(self, monkeypatch: pytest.MonkeyPatch) -> list[float]:
        pauses: list[float] = []
        monkeypatch.setattr(transient.time, "sleep", pauses.append)
        return pauses

    def test_waits_out_a_cut(self, pauses: list[float]) -> None:
        calls = iter([operational(), operational(), "done"])

        def call() -> str:
            outcome = next(calls)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        assert retrying(call, budget_s=60, what="test") == "done"
        assert pauses == [0.2, 0.4]

    def test_gives_up_after_the_budget(self) -> None:
        def call() -> None:
            raise operational()

        with pytest.raises(OperationalError):
            retrying(call, budget_s=0.0, what="test")

    def test_other_errors_are_not_retried(self, pauses: list[float]) -> None:
        def call() -> None:
            raise ValueError("a bug")

        with pytest.raises(ValueError, match="a bug"):
            retrying(call, budget_s=60, what="test")
        assert pauses == []
