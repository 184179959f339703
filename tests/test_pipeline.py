"""Text pipelines: parsing, `default` and group expansion, editing, option coercion."""
from __future__ import annotations

import pytest

import qcompile
from qcompile.pipeline import PassSpec, coerce_options
from qcompile.registry import group_members, unregister_pass

DEFAULT = qcompile.default_pipeline("reference")
CANON = ["normalize-ops", "decompose-attention", "fold-constants", "fold-batchnorm", "dead-code"]


@pytest.fixture(scope="module", autouse=True)
def typed_pass():
    @qcompile.register_pass("test-pipe-typed")
    def typed(gm, ctx, *, flag=False, count=1, ratio=0.5, label="x", free=None,
              two_words=3):
        """A pass with one option of every kind."""
        return None
    yield typed
    unregister_pass("test-pipe-typed")


def parse(text, default=DEFAULT):
    return qcompile.Pipeline.parse(text, default=default)


def test_plain_list():
    p = parse("fuse,observe,calibrate")
    assert p.names() == ["fuse", "observe", "calibrate"]
    assert all(s.options == () for s in p.specs)


def test_whitespace_is_ignored():
    assert parse(" fuse , observe ").names() == ["fuse", "observe"]


def test_options_are_parsed_in_order():
    (spec,) = parse("calibrate{method=percentile, p=99.99}").specs
    assert spec == PassSpec("calibrate", (("method", "percentile"), ("p", "99.99")))


def test_nested_braces_stay_inside_one_option():
    p = parse("test-pipe-typed{label={a=1,b={c=2}},count=3},fuse")
    assert p.names() == ["test-pipe-typed", "fuse"]
    assert p.specs[0].options == (("label", "{a=1,b={c=2}}"), ("count", "3"))
    assert coerce_options(p.specs[0])["label"] == "{a=1,b={c=2}}"


def test_empty_option_block():
    (spec,) = parse("calibrate{}").specs
    assert spec.options == () and str(spec) == "calibrate"


def test_default_expands_to_the_target_pipeline():
    p = parse("default")
    assert p.names() == parse(DEFAULT).names()
    assert p.names()[:5] == CANON
    assert p.names()[-2:] == ["lower-int8", "cleanup"]


def test_default_can_be_extended_on_both_sides():
    names = parse("dead-code,default,dead-code").names()
    assert names[0] == "dead-code" and names[-1] == "dead-code"
    assert names[1:-1] == parse("default").names()


def test_groups_expand_to_their_passes():
    assert tuple(CANON) == group_members("canonicalize")
    assert parse("canonicalize,fuse").names() == CANON + ["fuse"]


def test_group_takes_no_options():
    with pytest.raises(qcompile.PipelineError, match="group 'canonicalize'"):
        parse("canonicalize{x=1}")


def test_str_round_trip():
    text = "canonicalize,fuse,observe,calibrate{method=percentile,p=99.99},insert-qdq," \
           "lower-int8,cleanup"
    p = parse(text)
    assert str(p) == ",".join(CANON) + ",fuse,observe,calibrate{method=percentile," \
                                       "p=99.99},insert-qdq,lower-int8,cleanup"
    assert parse(str(p)) == p
    assert qcompile.Pipeline.parse(p) is p


def test_insert_after():
    p = parse("default").insert_after("fuse", "test-pipe-typed{count=2},dead-code")
    names = p.names()
    at = names.index("fuse")
    assert names[at + 1:at + 3] == ["test-pipe-typed", "dead-code"]
    assert p.specs[at + 1].options == (("count", "2"),)
    assert len(names) == len(parse("default").names()) + 2


def test_insert_after_uses_the_last_occurrence_and_groups_expand():
    p = parse("fuse,observe,fuse").insert_after("fuse", "canonicalize")
    assert p.names() == ["fuse", "observe", "fuse"] + CANON


def test_insert_after_unknown_anchor():
    with pytest.raises(qcompile.PipelineError, match="'nope'"):
        parse("default").insert_after("nope", "fuse")


def test_pipeline_is_immutable_and_hashable():
    p = parse("default")
    q = p.insert_after("fuse", "dead-code")
    assert p != q and "dead-code" not in p.names()[6:]
    assert hash(p) == hash(parse("default"))


def test_every_target_pipeline_parses():
    for info in qcompile.targets():
        p = parse("default", default=qcompile.default_pipeline(info.name))
        assert "lower-int8" in p.names()


def test_builtin_passes_are_known_without_compiling():
    names = {p.name for p in qcompile.list_passes()}
    assert {"fuse", "observe", "calibrate", "insert-qdq", "lower-int8", "cleanup"} <= names
    assert all(p.doc for p in qcompile.list_passes() if not p.name.startswith("test-"))


# --- option coercion ---------------------------------------------------------------------

def coerce(text):
    (spec,) = parse(f"test-pipe-typed{{{text}}}").specs
    return coerce_options(spec)


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("1", True),
                                         ("false", False), ("0", False)])
def test_bool_options(text, value):
    assert coerce(f"flag={text}") == {"flag": value}


def test_int_float_str_and_untyped_options():
    got = coerce("count=7,ratio=0.25,label=hello world,free=anything")
    assert got == {"count": 7, "ratio": 0.25, "label": "hello world", "free": "anything"}
    assert type(got["count"]) is int and type(got["ratio"]) is float


def test_float_option_accepts_integers_and_exponents():
    assert coerce("ratio=2")["ratio"] == 2.0
    assert coerce("ratio=1e-3")["ratio"] == pytest.approx(1e-3)


def test_dashed_option_names_map_to_underscores():
    assert coerce("two-words=5") == {"two_words": 5}


@pytest.mark.parametrize("text, kind", [("flag=yes", "bool"), ("count=1.5", "int"),
                                        ("count=many", "int"), ("ratio=half", "float")])
def test_bad_option_values(text, kind):
    key, value = text.split("=")
    with pytest.raises(qcompile.PipelineError) as info:
        coerce(text)
    message = str(info.value)
    assert f"'{key}'" in message and kind in message and f"'{value}'" in message
    assert "'test-pipe-typed'" in message


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(qcompile.PipelineError) as info:
        coerce("colour=red")
    assert "'colour'" in str(info.value) and "ratio" in str(info.value)


def test_underscore_spelling_is_not_an_option():
    with pytest.raises(qcompile.PipelineError, match="two_words"):
        coerce("two_words=5")
