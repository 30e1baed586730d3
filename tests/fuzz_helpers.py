"""What the fuzz tests (tests/test_fuzz_*.py) share: strategies for anything a
stream or a socket may carry, edits of a valid JSON object, and the case count
of a slow target. The profiles themselves are in conftest.py."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

#: Text with a lone surrogate in it: a Python str need not be valid Unicode (and these are
#: 2,048 code points of 1,114,112: st.text alone draws them seldom).
lone_surrogate_text = st.builds(lambda a, c, b: a + c + b, st.text(max_size=8), st.characters(categories=["Cs"]),
                                st.text(max_size=8))
#: Any text: any code points, and half the time a lone surrogate.
any_text = st.text(st.characters(exclude_categories=())) | lone_surrogate_text

#: Deep nesting, past a JSON parser's recursion limit.
deep_json = st.builds(lambda opener, n, tail: opener * n + tail,
                      st.sampled_from(["[", '{"a":', '{"type":"error","error":', '{"type":"utterance.text","x":']),
                      st.integers(0, 3000), st.sampled_from(["", "1", "]", "}"]))

#: JSON has no NaN or infinities (pydantic writes them as null).
finite = st.floats(allow_nan=False, allow_infinity=False)


def json_values(text: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Any]:
    """Any JSON value (strings from ``text``, short ones by default)."""
    text = st.text(max_size=12) if text is None else text
    return st.recursive(
        st.none() | st.booleans() | st.integers() | finite | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=8,
    )


plain_json = json_values()
#: A JSON value an edit puts in: a scalar, or a flat list or object of them (cheaper to draw than
#: `plain_json`: the bases hold the nesting).
_scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=12)
edit_values = _scalars | st.lists(_scalars, max_size=3) | st.dictionaries(st.text(max_size=8), _scalars, max_size=3)

#: Field names: any, and some that collide with pydantic's own attributes.
field_names = st.text(max_size=12) | st.sampled_from(["model_config", "model_fields", "__class__", "__dict__",
                                                      "dict", "json", "copy", "v", "type", "event_id"])


def edited(bases: Sequence[dict[str, Any]], types: Sequence[str]) -> st.SearchStrategy[Any]:
    """One of ``bases`` (valid JSON objects) after a few edits, at the top or one
    object down: a key dropped, a value replaced by any JSON value or an over-long
    string, a key added, ``type`` swapped for another (or anything); sometimes not
    an object at all. Reaches the validation paths of every model."""
    type_values = st.sampled_from([*types, "", "no.such.type"]) | edit_values
    edits = st.lists(st.tuples(st.sampled_from(["drop", "set", "add", "type", "long"]), st.booleans(),
                               st.integers(0, 99)), min_size=1, max_size=4)
    lengths = st.sampled_from([65, 101, 201, 2001, 8001])

    @st.composite
    def draw_edited(draw: st.DrawFn) -> Any:
        obj: dict[str, Any] = copy.deepcopy(bases[draw(st.integers(0, len(bases) - 1))])
        for edit, down, pick in draw(edits):
            target = obj
            nested = [k for k in sorted(obj) if isinstance(obj[k], dict)]
            if nested and down:
                target = obj[nested[pick % len(nested)]]
            keys = sorted(target)
            key = keys[pick % len(keys)] if keys else None
            if edit == "drop" and key is not None:
                del target[key]
            elif edit == "set" and key is not None:
                target[key] = draw(edit_values)
            elif edit == "add":
                target[draw(field_names)] = draw(edit_values)
            elif edit == "type":
                target["type"] = draw(type_values)
            elif edit == "long" and key is not None:
                target[key] = "x" * draw(lengths)
        return draw(st.sampled_from([obj, obj, obj, [obj], "an object?", None]))

    return draw_edited()

