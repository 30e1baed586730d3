"""The batch program's op layout is defined once (shared.bus.program.OPS): the
Lua file states the same layout, and frames carry their own operand counts."""

from __future__ import annotations

import re

import pytest

from shared.bus.program import ADD, ADD_MANY, FENCE, GATE, OPS, RING, Fence, Program, QueuedOp, lua_source
from shared.keys import Keys


def test_every_lua_op_line_matches_its_python_spec_and_nothing_else() -> None:
    lua = lua_source("batch")
    stated = set(re.findall(r"^-- op (\w\([^)]*\))", lua, re.M))
    assert stated == {spec.signature for spec in OPS.values()}
    handlers = set(re.findall(r"^OPS\.(\w+) = function", lua, re.M))
    assert handlers == set(OPS)


def test_frames_carry_their_counts_and_keys_by_index() -> None:
    prog = Program()
    prog.add(QueuedOp(GATE.code, ("src", "dst"), ("g", "1-0", 100, b"d", b"v", "0-1", "0-2")))
    prog.add(QueuedOp(ADD.code, ("dst",), (100, b"d", b"a")))
    prog.add(QueuedOp(ADD.code, ("dst",), (100, b"d", b"b")))  # folds with the add before it
    assert prog.keys == ["src", "dst"]
    assert prog.argv() == ["G", 2, 7, 1, 2, "g", "1-0", 100, b"d", b"v", "0-1", "0-2",
                           "M", 1, 4, 2, 100, b"d", b"a", b"b"]
    assert [item.spec for item in prog.items] == [GATE, ADD_MANY]


def test_a_frame_with_the_wrong_operands_is_refused_before_it_is_sent() -> None:
    with pytest.raises(ValueError, match="op X"):
        ADD.frame([1], [100, b"d"])
    with pytest.raises(ValueError, match="op R"):
        RING.frame([1, 2], [10, "input", "a"])


def test_rings_name_the_conversations_written_once_per_kind() -> None:
    keys = Keys("p")
    prog = Program()
    for cid in ("a", "b", "a"):
        prog.add(QueuedOp(ADD.code, (keys.transcripts(cid),), (100, b"d", b"t")))
    prog.add(QueuedOp(ADD.code, (keys.dead(0),), (100, b"d", b"x")))
    prog.add_rings(keys, 1000)
    rings = [item for item in prog.items if item.spec is RING]
    assert [(prog.keys[r.key_idxs[0] - 1], r.args) for r in rings] == [
        (keys.bell(0, "transcripts"), [1000, "transcripts", "a b"])
    ]


def test_a_run_of_ops_behind_one_fence_gets_one_fence_frame_counting_its_frames() -> None:
    fence = Fence("ctl", "g", "w1", "5-0")
    prog = Program()
    prog.add(QueuedOp(ADD.code, ("dst",), (100, b"d", b"a"), fence=fence))
    prog.add(QueuedOp(ADD.code, ("dst",), (100, b"d", b"b"), fence=fence))  # folds: still one frame
    prog.add(QueuedOp(GATE.code, ("src", "dst"), ("g", "1-0", 100, b"d", b"v"), fence=fence))
    prog.add(QueuedOp(ADD.code, ("dst",), (100, b"d", b"c")))  # no fence: ends the run, does not fold
    prog.add(QueuedOp(ADD.code, ("dst",), (100, b"d", b"e"), fence=fence))  # a new run, a new frame
    assert [item.spec for item in prog.items] == [FENCE, ADD_MANY, GATE, ADD, FENCE, ADD]
    assert prog.keys == ["dst", "ctl", "src"]
    assert prog.argv()[:7] == ["F", 1, 4, 2, "g", "w1", "5-0"]
    assert prog.items[0].args == ["g", "w1", "5-0", 2] and prog.items[4].args == ["g", "w1", "5-0", 1]
