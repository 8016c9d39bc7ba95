"""Layer specs and layer groups (layerwise/core/layers.py), incl. the shared test vectors."""
import json
from pathlib import Path

import pytest

from layerwise.core.errors import LayerwiseError
from layerwise.core.layers import format_layers, parse_layer_spec, split_layer_groups

CASES = json.loads((Path(__file__).resolve().parents[1] / "layer_spec_cases.json").read_text(encoding="utf-8"))
SPEC_CASES = [c for c in CASES]
GROUP_CASES = [c for c in CASES if "groups" in c]


def test_vectors_are_rich_and_well_formed():
    assert len(CASES) >= 20
    assert sum("error_contains" in c for c in CASES) >= 8
    assert len(GROUP_CASES) >= 8
    for c in CASES:
        assert ("expect" in c) != ("error_contains" in c), c
        if "groups" in c:
            assert ("expect_groups" in c) != ("groups_error_contains" in c), c


@pytest.mark.parametrize("case", SPEC_CASES, ids=[repr(c["spec"]) for c in SPEC_CASES])
def test_layer_spec_vector(case):
    if "expect" in case:
        assert parse_layer_spec(case["spec"], case["num_layers"]) == case["expect"]
    else:
        with pytest.raises(LayerwiseError) as e:
            parse_layer_spec(case["spec"], case["num_layers"])
        assert case["error_contains"] in str(e.value)
        assert "--layers" in str(e.value)
        assert f"[0, {case['num_layers']})" in str(e.value)  # every error names the valid range


@pytest.mark.parametrize("case", GROUP_CASES, ids=[f"{c['spec']}|{c['groups']}" for c in GROUP_CASES])
def test_layer_group_vector(case):
    layers = parse_layer_spec(case["spec"], case["num_layers"])
    if "expect_groups" in case:
        assert split_layer_groups(layers, case["groups"]) == case["expect_groups"]
    else:
        with pytest.raises(LayerwiseError) as e:
            split_layer_groups(layers, case["groups"])
        assert case["groups_error_contains"] in str(e.value)
        assert "--layer_groups" in str(e.value)


@pytest.mark.parametrize("spec, token", [("0-40", "'0-40'"), ("18-14", "'18-14'"), ("-2", "'-2'"), ("x1", "'x1'")])
def test_errors_name_the_offending_token(spec, token):
    with pytest.raises(LayerwiseError, match="--layers") as e:
        parse_layer_spec(spec, 34)
    assert token in str(e.value)


def test_out_of_range_names_layer_and_range():
    with pytest.raises(LayerwiseError) as e:
        parse_layer_spec("0 10 34", 34)
    msg = str(e.value)
    assert "layer 34" in msg and "out of range" in msg and "[0, 34)" in msg and "0-33" in msg


def test_reversed_range_suggests_the_fix():
    with pytest.raises(LayerwiseError, match="write '14-18'"):
        parse_layer_spec("18-14", 34)


def test_int_spec_and_bad_num_layers():
    assert parse_layer_spec(5, 34) == [5]
    with pytest.raises(ValueError):
        parse_layer_spec("all", 0)


@pytest.mark.parametrize("layers, text", [
    ([0, 1, 2, 3, 7], "0-3,7"),
    ([7, 3, 2, 1, 0, 3], "0-3,7"),
    ([5], "5"),
    ([5, 6], "5-6"),
    ([], ""),
    ([0, 2, 4], "0,2,4"),
    (range(34), "0-33"),
])
def test_format_layers(layers, text):
    assert format_layers(layers) == text


@pytest.mark.parametrize("layers", [[0, 1, 2, 3, 7], [0, 2, 4], list(range(34)), [33]])
def test_format_round_trips(layers):
    assert parse_layer_spec(format_layers(layers), 34) == layers


def test_seed_split_34_layers_in_4_groups():
    groups = split_layer_groups(list(range(34)), 4)
    assert [format_layers(g) for g in groups] == ["0-8", "9-16", "17-24", "25-33"]
    assert split_layer_groups(list(range(34)), "4") == groups
    assert split_layer_groups(list(range(34)), " 4 ") == groups


@pytest.mark.parametrize("n_layers, n_groups", [(34, 3), (34, 5), (35, 4), (7, 7), (10, 3), (62, 8), (5, 1)])
def test_int_split_is_contiguous_near_equal_and_complete(n_layers, n_groups):
    layers = list(range(0, 2 * n_layers, 2))  # not contiguous: split follows the requested order
    groups = split_layer_groups(layers, n_groups)
    assert len(groups) == n_groups
    assert [x for g in groups for x in g] == layers
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1


def test_auto_keeps_old_groups_when_a_separate_range_is_added():
    before = split_layer_groups(parse_layer_spec("0-8", 34), "auto")
    after = split_layer_groups(parse_layer_spec("0-8 20-25", 34), "auto")
    assert before == [list(range(9))]
    assert after == [list(range(9)), list(range(20, 26))]
    assert split_layer_groups([3], None) == [[3]]


def test_explicit_groups_sorted_and_semicolon_form():
    assert split_layer_groups(list(range(17)), "9-16,0-8") == [list(range(9)), list(range(9, 17))]
    assert split_layer_groups([0, 1, 2, 3], "0 2; 1 3") == [[0, 2], [1, 3]]


@pytest.mark.parametrize("groups, fragment", [
    ("0-8,9-15", "16 are in no group"),
    ("0-9,9-16", "layer 9 is in two groups"),
    ("0-8,9-20", "layer 17 (in group '9-20') is not one of the requested"),
    ("0-8,16-9", "reversed"),
    ("0-8,oops", "cannot read 'oops'"),
    ("18", "more groups than the 17 requested layers"),
    ("0", "at least 1"),
    ("-2", "at least 1"),
    (";", "names no groups"),
    ("", "is empty"),
    (True, "needs a value"),
])
def test_invalid_groups_name_the_parameter(groups, fragment):
    with pytest.raises(LayerwiseError) as e:
        split_layer_groups(list(range(17)), groups)
    assert "--layer_groups" in str(e.value)
    assert fragment in str(e.value)


# -- one rule for the parameter syntax: nextflow_schema.json's patterns are layers.py's ---------------
def _schema_property(name: str) -> dict:
    schema = json.loads((Path(__file__).resolve().parents[2] / "nextflow_schema.json").read_text(encoding="utf-8"))
    for group in schema["$defs"].values():
        if name in group.get("properties", {}):
            return group["properties"][name]
    raise KeyError(name)


def test_schema_patterns_are_the_parsers():
    from layerwise.core.layers import LAYER_GROUPS_PATTERN, LAYER_SPEC_PATTERN

    assert _schema_property("layers")["pattern"] == LAYER_SPEC_PATTERN
    assert _schema_property("layer_groups")["pattern"] == LAYER_GROUPS_PATTERN


@pytest.mark.parametrize("case", CASES, ids=[repr(c["spec"]) for c in CASES])
def test_layer_pattern_accepts_exactly_what_the_parser_can_read(case):
    """Syntax only: a spec the schema pattern matches either parses or fails on its values (a layer out of
    the model's range, a reversed range: refused by the parser, in PREFLIGHT); one it rejects cannot be read."""
    import re

    from layerwise.core.layers import LAYER_SPEC_PATTERN

    matches = re.fullmatch(LAYER_SPEC_PATTERN, case["spec"]) is not None
    try:
        parse_layer_spec(case["spec"], 10**6)
        readable = True
    except LayerwiseError as e:
        readable = "reversed" in str(e) or "out of range" in str(e)
    assert matches == readable, (case["spec"], matches, readable)


@pytest.mark.parametrize("case", GROUP_CASES, ids=[f"{c['spec']}|{c['groups']}" for c in GROUP_CASES])
def test_group_pattern_accepts_what_the_parser_can_read(case):
    import re

    from layerwise.core.layers import LAYER_GROUPS_PATTERN

    text = str(case["groups"])
    try:
        split_layer_groups(list(range(200)), text)
        readable = True
    except LayerwiseError as e:
        readable = "cannot read" not in str(e) and "is empty" not in str(e)
    assert (re.fullmatch(LAYER_GROUPS_PATTERN, text) is not None) == readable, text


# -- the head's copy of the rules (lib/LayerwiseInputs.groovy): same vectors, one JVM -----------------------------
HEAD_PARSE = """
def inputs = new GroovyClassLoader().with { addClasspath(args[0]); loadClass('LayerwiseInputs') }
def cases = new groovy.json.JsonSlurper().parse(new File(args[1]))
def models = new groovy.json.JsonSlurper().parse(new File(args[2]))
println groovy.json.JsonOutput.toJson([
    specs : cases.collect { c -> inputs.parseLayers(c.spec, c.num_layers as int).with { it instanceof List ? it : it.toString() } },
    depths: models.collectEntries { name, dir ->
        [(name): inputs.decoderLayers(inputs.modelConfig(dir, null, [:]))] },
])
"""


@pytest.fixture(scope="module")
def head_parsing(tmp_path_factory, fixture_dir):
    import subprocess

    from tests.support.engine import groovy_command

    tmp = tmp_path_factory.mktemp("head-layers")
    models = {"gemma3": str(fixture_dir / "model"),
              **{d.name: str(d) for d in sorted((fixture_dir / "families").iterdir()) if d.is_dir()}}
    (tmp / "models.json").write_text(json.dumps(models))
    (tmp / "parse.groovy").write_text(HEAD_PARSE)
    run = subprocess.run(groovy_command(tmp / "parse.groovy", Path(__file__).resolve().parents[1] / "layer_spec_cases.json",
                                        tmp / "models.json"), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), models


def test_the_head_reads_layer_specs_by_the_same_rules(head_parsing):
    """What the head refuses before any job (a layer beyond the model's depth), PREFLIGHT refuses the same way."""
    results = head_parsing[0]["specs"]
    for case, got in zip(CASES, results, strict=True):
        if "expect" in case:
            assert got == case["expect"], (case, got)
        else:
            assert isinstance(got, str) and case["error_contains"] in got and "--layers" in got, (case, got)


def test_the_head_reads_each_family_depth_as_layerwise_does(head_parsing):
    from layerwise.models.loading import read_model_info

    depths, models = head_parsing[0]["depths"], head_parsing[1]
    assert len(models) >= 9
    for name, folder in models.items():
        assert depths[name] == read_model_info(folder)["num_layers"], name
