"""Component recipes: the single source of truth for each component's definition.

One JSON file per component in ``recipes/``:

* ``code``: the folder of the Lambda function's handler, relative to the repository;
* ``function``: the Lambda function's settings, as ``lambda create-function`` takes them, minus
  ``Role`` and ``Code``;
* ``lambdaFunction``: the Greengrass V2 ``CreateComponentVersion`` ``lambdaFunction`` input minus
  ``lambdaArn`` (name, version, dependencies, event sources, pinned, timeouts, queue, environment,
  isolation, memory);
* ``deployment`` (optional): what the deployment sets for the component, today ``cpus``, its CPU
  share in ``runWith.systemResourceLimits`` (the memory limit there is ``memorySizeInKB``).

The local runtime, the packaging and the deployment all read these files, so what is tested on a
laptop is what is deployed. ``check_recipes`` refuses what Greengrass or Lambda would refuse (the
request shapes of botocore's service models, including enums, ranges and patterns) and what would
break at run time (dependency cycles, unknown dependencies, wildcard PUB_SUB topics, handlers
that do not import).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from telemetry.edge.errors import RecipeError

PLACEHOLDER_ARN = "arn:aws:lambda:us-east-1:123456789012:function:placeholder:1"
PLACEHOLDER_ROLE = "arn:aws:iam::123456789012:role/placeholder"


@dataclass(frozen=True)
class Recipe:
    path: Path
    code: Path
    function: Mapping[str, Any]
    lambda_function: Mapping[str, Any]
    deployment: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cpus(self) -> float | None:
        """The CPU share the deployment gives the component (``runWith.systemResourceLimits``)."""
        value = self.deployment.get("cpus")
        return None if value is None else float(value)

    @property
    def name(self) -> str:
        return str(self.lambda_function.get("componentName", self.path.stem))

    @property
    def version(self) -> str:
        return str(self.lambda_function.get("componentVersion", ""))

    @property
    def params(self) -> Mapping[str, Any]:
        return self.lambda_function.get("componentLambdaParameters", {})

    @property
    def dependencies(self) -> dict[str, str]:
        deps = self.lambda_function.get("componentDependencies", {})
        return {name: spec.get("dependencyType", "HARD") for name, spec in deps.items()}

    @property
    def topics(self) -> list[str]:
        return [s["topic"] for s in self.params.get("eventSources", []) if s.get("type") == "PUB_SUB"]

    @property
    def pinned(self) -> bool:
        return bool(self.params.get("pinned", False))

    @property
    def max_queue_size(self) -> int:
        return int(self.params.get("maxQueueSize", 1000))

    @property
    def timeout(self) -> float:
        return float(self.params.get("timeoutInSeconds", 3))

    @property
    def binary_input(self) -> bool:
        """``inputPayloadEncodingType`` binary: the handler's event is the payload's bytes."""
        return self.params.get("inputPayloadEncodingType", "json") == "binary"

    @property
    def environment(self) -> dict[str, str]:
        return dict(self.params.get("environmentVariables", {}))

    @property
    def handler(self) -> tuple[Path, str]:
        """(module file, function name) from the Lambda ``Handler`` setting."""
        module, _, func = str(self.function.get("Handler", "")).rpartition(".")
        return self.code / (module.replace(".", "/") + ".py"), func

    def create_component_version_input(self, lambda_arn: str) -> dict[str, Any]:
        return {"lambdaFunction": {"lambdaArn": lambda_arn, **self.lambda_function}}

    def create_function_input(self, role: str, code: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.function, "Role": role, "Code": dict(code)}


def load_recipe(path: Path, root: Path) -> Recipe:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    missing = [key for key in ("code", "function", "lambdaFunction") if key not in data]
    if missing:
        raise RecipeError(f"{path}: missing {', '.join(missing)}")
    unknown = sorted(set(data) - {"code", "function", "lambdaFunction", "deployment"})
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(unknown)}")
    deployment = data.get("deployment", {})
    if not isinstance(deployment, dict) or set(deployment) - {"cpus"}:
        raise RecipeError(f"{path}: 'deployment' takes only 'cpus'")
    cpus = deployment.get("cpus")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 < cpus <= 64):
        raise RecipeError(f"{path}: deployment cpus must be a number above 0 (a share of the cores), not {cpus!r}")
    return Recipe(path, (root / data["code"]).resolve(), data["function"], data["lambdaFunction"], deployment)


def load_recipes(directory: str | Path, root: str | Path | None = None) -> list[Recipe]:
    directory = Path(directory)
    root = Path(root) if root is not None else directory.parent
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise RecipeError(f"{directory}: no recipes (*.json) found")
    return [load_recipe(p, root) for p in paths]


def start_order(recipes: Iterable[Recipe]) -> list[Recipe]:
    """Dependencies first (Greengrass starts a component once its HARD dependencies run).
    Ties are broken by name, so the order is stable. Raises on cycles and unknown names."""
    by_name = {r.name: r for r in recipes}
    for r in by_name.values():
        for dep in r.dependencies:
            if dep not in by_name:
                raise RecipeError(f"{r.path.name}: {r.name} depends on unknown component {dep}")
    order: list[Recipe] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = trail[trail.index(name):] + [name]
            raise RecipeError(f"dependency cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in sorted(by_name[name].dependencies):
            visit(dep, trail + [name])
        state[name] = 2
        order.append(by_name[name])

    for name in sorted(by_name):
        visit(name, [])
    return order


def import_handler(recipe: Recipe, module_name: str | None = None) -> tuple[ModuleType, Any]:
    """Import a recipe's handler module from its file and return (module, handler function)."""
    path, func = recipe.handler
    if not path.is_file():
        raise RecipeError(f"{recipe.path.name}: handler file {path} not found")
    name = module_name or "_telemetry_check_" + re.sub(r"\W", "_", recipe.name)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except RecipeError:
        raise
    except Exception as exc:
        del sys.modules[name]
        raise RecipeError(f"{recipe.path.name}: handler {path} does not import: {type(exc).__name__}: {exc}") from exc
    handler = getattr(module, func, None)
    if not callable(handler):
        raise RecipeError(f"{recipe.path.name}: {path} has no callable {func!r}")
    return module, handler


@cache
def _model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def _shape_problems(shape: Any, value: Any, where: str) -> list[str]:
    """What botocore's ParamValidator does not check: enums, maximums, patterns."""
    problems = []
    meta = shape.metadata
    if shape.type_name == "structure" and isinstance(value, Mapping):
        for key, item in value.items():
            if key in shape.members:
                problems += _shape_problems(shape.members[key], item, f"{where}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            problems += _shape_problems(shape.member, item, f"{where}[{i}]")
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: more than {meta['max']} items")
    elif shape.type_name == "map" and isinstance(value, Mapping):
        for key, item in value.items():
            problems += _shape_problems(shape.key, key, f"{where} key {key!r}")
            problems += _shape_problems(shape.value, item, f"{where}.{key}")
    elif shape.type_name == "string" and isinstance(value, str):
        enum = getattr(shape, "enum", None)
        if enum and value not in enum:
            problems.append(f"{where}: {value!r} is not one of {', '.join(enum)}")
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: longer than {meta['max']}")
        pattern = meta.get("pattern")
        if pattern:
            try:
                if not re.fullmatch(pattern, value):
                    problems.append(f"{where}: {value!r} does not match {pattern}")
            except re.error:
                pass  # a few AWS patterns use syntax Python's re does not take
    elif shape.type_name in ("integer", "long") and isinstance(value, int):
        if "max" in meta and value > meta["max"]:
            problems.append(f"{where}: {value} is above the maximum {meta['max']}")
    return problems


def request_problems(service: str, operation: str, params: Mapping[str, Any]) -> list[str]:
    """What the AWS API would refuse in a request, checked offline against botocore's model of
    the operation: ParamValidator (required members, types, minimums) plus enums, maximums and
    patterns, which ParamValidator does not check."""
    from botocore.validate import ParamValidator

    shape = _model(service).operation_model(operation).input_shape
    problems = []
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        problems += [line.strip() for line in report.generate_report().splitlines() if line.strip()]
    return problems + _shape_problems(shape, params, "")


def service_model_problems(recipe: Recipe, *, cache: Path | None = None) -> list[str]:
    """Check the recipe's two halves against the real request models of CreateComponentVersion
    and Lambda CreateFunction, as the AWS API would, offline.

    Loading botocore and its two models takes about a second, every replay. A recipe found sound
    is remembered in ``cache`` (default ``$XDG_CACHE_HOME/telemetry``, or ``~/.cache/telemetry``)
    by a hash of the two requests, botocore's version and this module's code: the same requests
    against the same models and checks pass again, so they are not checked again. A changed
    recipe, another botocore or another version of these checks is.
    A cache that cannot be read or written is no cache."""
    checks = [
        ("greengrassv2", "CreateComponentVersion", recipe.create_component_version_input(PLACEHOLDER_ARN), "lambdaFunction"),
        ("lambda", "CreateFunction", recipe.create_function_input(PLACEHOLDER_ROLE, {"ZipFile": b"zip"}), "function"),
    ]
    folder = cache if cache is not None else _cache_folder()
    key = hashlib.sha256(json.dumps([_botocore_version(), _checker(), checks], sort_keys=True, default=repr).encode()).hexdigest()
    sound = folder / f"recipe-{key[:32]}.ok"
    if sound.is_file():
        return []
    problems = [f"{label}: {p}" for service, op, params, label in checks for p in request_problems(service, op, params)]
    if not problems:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sound.write_text(f"{recipe.name}: sound against botocore {_botocore_version()}\n")
        except OSError:
            pass
    return problems


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "telemetry"


@cache
def _checker() -> str:
    """This module's own digest: a newer check of the recipes does not trust an older one's word."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@cache
def _botocore_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("botocore")
    except PackageNotFoundError:
        return "?"


def recipe_problems(recipe: Recipe, *, import_handlers: bool = True) -> list[str]:
    problems = [f"{recipe.path.name}: {p}" for p in service_model_problems(recipe)]
    for source in recipe.params.get("eventSources", []):
        topic = source.get("topic", "")
        if source.get("type") == "PUB_SUB" and ("+" in topic or "#" in topic):
            problems.append(f"{recipe.path.name}: PUB_SUB event source {topic!r} has a wildcard (Greengrass takes exact topics only)")
    if recipe.function.get("Runtime") != "python3.11":
        problems.append(f"{recipe.path.name}: runtime must be python3.11, not {recipe.function.get('Runtime')!r}")
    if import_handlers:
        try:
            import_handler(recipe)
        except RecipeError as exc:
            problems.append(str(exc))
    return problems


def check_recipes(recipes: list[Recipe], *, import_handlers: bool = True) -> list[Recipe]:
    """Raise RecipeError listing every problem; return the recipes in start order."""
    problems = []
    names: dict[str, Path] = {}
    for recipe in recipes:
        if recipe.name in names:
            problems.append(f"{recipe.path.name}: component {recipe.name} is also defined in {names[recipe.name].name}")
        names[recipe.name] = recipe.path
        problems += recipe_problems(recipe, import_handlers=import_handlers)
    try:
        order = start_order(recipes)
    except RecipeError as exc:
        problems.append(str(exc))
        order = []
    if problems:
        raise RecipeError("invalid recipes:\n  " + "\n  ".join(problems))
    return order
