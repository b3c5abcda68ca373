"""Recipes: the real ones validate against botocore's service models and start in the designed
order; each kind of broken recipe set is refused with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from telemetry.edge.errors import RecipeError
from telemetry.tools.recipes import check_recipes, load_recipes, service_model_problems, start_order

ROOT = Path(__file__).resolve().parents[2]


def test_the_project_recipes_are_valid_and_start_in_dependency_order():
    order = check_recipes(load_recipes(ROOT / "recipes"))
    # the uploader has no producer to wait for; the reader starts last, once its consumers run
    assert [r.name for r in order] == [
        "telemetry.Uploader",
        "telemetry.Aggregator",
        "telemetry.AnomalyDetector",
        "telemetry.CanReader",
    ]


def test_the_project_recipes_say_what_greengrass_leaves_ambiguous():
    recipes = {r.name: r for r in load_recipes(ROOT / "recipes")}
    for r in recipes.values():
        assert "pinned" in r.params and r.pinned, r.name  # its default is documented two ways
        assert r.function["Runtime"] == "python3.11"
        # signals batches and batches of windows are binary: every subscriber takes bytes (and
        # reads JSON from them too)
        assert r.binary_input == bool(r.topics), r.name
        assert r.handler[0].is_file()
    reader = recipes["telemetry.CanReader"]
    assert reader.params["linuxProcessParams"]["isolationMode"] == "NoContainer"  # SocketCAN is not a /dev node
    assert reader.topics == []
    assert recipes["telemetry.Aggregator"].topics == ["telemetry/signals"] == recipes["telemetry.AnomalyDetector"].topics
    assert set(recipes["telemetry.Uploader"].topics) == {"telemetry/aggregates", "telemetry/alerts"}
    # every topic a component publishes to is an event source of some other component
    sources = {t for r in recipes.values() for t in r.topics}
    outputs = {r.environment["TELEMETRY_OUTPUT_TOPIC"] for r in recipes.values() if "TELEMETRY_OUTPUT_TOPIC" in r.environment}
    assert outputs <= sources


@pytest.fixture
def project(tmp_path):
    """A copy of recipes/ and lambdas/ to break."""
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(ROOT / "lambdas", tmp_path / "lambdas")
    return tmp_path


def edit(project: Path, name: str, change) -> None:
    path = project / "recipes" / f"{name}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def problems(project: Path) -> str:
    with pytest.raises(RecipeError) as err:
        check_recipes(load_recipes(project / "recipes"))
    return str(err.value)


def test_dependency_cycle(project):
    edit(project, "uploader", lambda d: d["lambdaFunction"].__setitem__(
        "componentDependencies", {"telemetry.CanReader": {"versionRequirement": ">=1.0.0", "dependencyType": "SOFT"}}))
    assert "dependency cycle: telemetry.Aggregator -> telemetry.Uploader -> telemetry.CanReader -> telemetry.Aggregator" in problems(project)


def test_unknown_dependency(project):
    edit(project, "aggregator", lambda d: d["lambdaFunction"]["componentDependencies"].__setitem__(
        "telemetry.Missing", {"versionRequirement": ">=1.0.0", "dependencyType": "HARD"}))
    assert "telemetry.Aggregator depends on unknown component telemetry.Missing" in problems(project)


def test_wildcard_pub_sub_topic(project):
    edit(project, "uploader", lambda d: d["lambdaFunction"]["componentLambdaParameters"]["eventSources"].append(
        {"topic": "telemetry/#", "type": "PUB_SUB"}))
    assert "PUB_SUB event source 'telemetry/#' has a wildcard" in problems(project)


def test_handler_that_does_not_import(project):
    (project / "lambdas" / "aggregator" / "handler.py").write_text("import telemetry.nonexistent\n")
    text = problems(project)
    assert "aggregator.json: handler" in text and "does not import: ModuleNotFoundError" in text


def test_handler_function_missing(project):
    edit(project, "uploader", lambda d: d["function"].__setitem__("Handler", "handler.nope"))
    assert "has no callable 'nope'" in problems(project)


def test_values_the_api_would_refuse(project):
    def change(d):
        params = d["lambdaFunction"]["componentLambdaParameters"]
        params["inputPayloadEncodingType"] = "xml"  # enum: ParamValidator alone lets this through
        params["eventSources"][0]["type"] = "LOCAL"
        params["maxQueueSize"] = "many"
        d["function"]["Runtime"] = "python2.7"

    edit(project, "uploader", change)
    text = problems(project)
    assert "inputPayloadEncodingType: 'xml' is not one of json, binary" in text
    assert "type: 'LOCAL' is not one of PUB_SUB, IOT_CORE" in text
    assert "maxQueueSize" in text and "many" in text
    assert "runtime must be python3.11" in text


def test_service_model_check_accepts_the_real_recipes(tmp_path):
    for recipe in load_recipes(ROOT / "recipes"):
        assert service_model_problems(recipe, cache=tmp_path / "empty") == []


def test_a_sound_recipe_is_remembered_and_a_changed_one_checked_again(tmp_path, monkeypatch, project):
    from telemetry.tools import recipes as module

    cache = tmp_path / "cache"
    recipe = next(r for r in load_recipes(project / "recipes") if r.name.endswith("Uploader"))
    assert service_model_problems(recipe, cache=cache) == []
    assert len(list(cache.iterdir())) == 1

    def no_models(service):
        raise AssertionError(f"the model of {service} was loaded")

    monkeypatch.setattr(module, "_model", no_models)
    assert service_model_problems(recipe, cache=cache) == []  # remembered: no model loaded
    with monkeypatch.context() as m:  # another version of the checks does not take the old one's word
        m.setattr(module, "_checker", lambda: "another version")
        with pytest.raises(AssertionError, match="was loaded"):
            service_model_problems(recipe, cache=cache)
    edit(project, "uploader", lambda d: d["lambdaFunction"]["componentLambdaParameters"].update(maxQueueSize=7))
    changed = next(r for r in load_recipes(project / "recipes") if r.name.endswith("Uploader"))
    with pytest.raises(AssertionError, match="was loaded"):
        service_model_problems(changed, cache=cache)
    monkeypatch.undo()
    # a recipe with problems is never remembered: it is refused every time
    edit(project, "uploader", lambda d: d["lambdaFunction"]["componentLambdaParameters"].update(inputPayloadEncodingType="xml"))
    bad = next(r for r in load_recipes(project / "recipes") if r.name.endswith("Uploader"))
    assert service_model_problems(bad, cache=cache) and service_model_problems(bad, cache=cache)
    assert len(list(cache.iterdir())) == 1


def test_start_order_is_stable_and_dependencies_first(project):
    recipes = load_recipes(project / "recipes")
    names = [r.name for r in start_order(reversed(recipes))]
    assert names == [r.name for r in start_order(recipes)]


def test_every_recipe_sets_its_log_level_and_cpu_share():
    for r in load_recipes(ROOT / "recipes"):
        assert r.environment["TELEMETRY_LOG_LEVEL"] == "INFO", r.name  # read by the adapter on a core
        assert r.cpus is not None and 0 < r.cpus <= 1, r.name


@pytest.mark.parametrize("deployment, message", [
    ({"cpus": 0}, "deployment cpus must be a number above 0"),
    ({"cpus": "half"}, "deployment cpus must be a number above 0"),
    ({"cpus": 1, "memory": 5}, "'deployment' takes only 'cpus'"),
])
def test_a_deployment_section_is_checked(project, deployment, message):
    edit(project, "aggregator", lambda d: d.update(deployment=deployment))
    with pytest.raises(RecipeError, match=message):
        load_recipes(project / "recipes")
