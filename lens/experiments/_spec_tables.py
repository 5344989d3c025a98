"""The spec's tables as pydantic models: types, ranges, choices and unions, with no file or model access.

``_spec`` reads the TOML, validates it against ``SpecTable`` here, turns pydantic's errors into
``SpecError`` lines with key paths and line numbers, and then checks what needs the world.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag,
                      create_model, model_validator)
from pydantic_core import PydanticCustomError

from lens.experiments._scoring import OUTPUTS
from lens.experiments._tasks import TASKS, task_options
from lens.model import resolve_placement

# The calibration vocabulary a spec may name (``_calibrate`` implements each).
OBJECTIVES = ("accuracy", "entropy", "entropy_vocab")
SCOPES = ("layer", "head_index", "all")

METRICS = ("accuracy", *OUTPUTS[1:])
#: Most examples (calibration + test) a spec may ask for. Checking a spec builds its task, and the
#: generated tasks build ~20k examples a second (ioi, colored_objects, induction: 10k in 0.4-0.6 s), so
#: test = 2**31 hung the check (found by tests/experiments/test_fuzz_specs.py); 50k keeps it under ~3 s, and a
#: run over more examples takes hours on a CPU anyway.
MAX_EXAMPLES = 50_000
#: Largest integer task option (shots, filler, period, n_choices: counts inside every prompt). 1,000
#: is past any model's context here; colored_objects shots = 10**7 hung the check (test_fuzz_specs.py).
MAX_TASK_OPTION = 1_000


def _refusal(message: str, *at: str | int) -> PydanticCustomError:
    """A check's failure, raised inside a validator; ``at`` is the key path below the table that raised it."""
    return PydanticCustomError("spec", "{message}", {"message": message, "at": at})


def _not_nan(value):
    if isinstance(value, float) and value != value:  # nan: every range check would pass it
        raise PydanticCustomError("nan", "expected a number, got nan")
    return value


def _span(span: list[int]) -> tuple[int, int]:
    if len(span) != 2 or span[0] > span[1]:
        raise _refusal(f"expected [start, stop] with start <= stop, got {span!r}")
    return tuple(span)


def _one_or_list(one, many) -> Any:
    """A value (``one``) or a list (``many``), the branch picked by the value's type so that pydantic reports
    that branch's errors only (a plain union reports each branch's). Its tags are not keys: ``_keypath`` drops them."""
    pick = Discriminator(lambda value: "many" if isinstance(value, list) else "one")
    return Annotated[Union[Annotated[one, Tag("one")], Annotated[many, Tag("many")]], pick]


Text = Annotated[str, Field(pattern=r"\S")]  # a non-empty string
Count = Annotated[int, Field(ge=0)]  # a seed, an example count, a layer, head or key index
Real = Annotated[float, BeforeValidator(_not_nan)]  # an int or a float, not nan (strict: not a bool)
NonNegative = Annotated[Real, Field(ge=0.0)]
Indices = Annotated[list[Count], Field(min_length=1)]
IndexTuple = Annotated[Indices, AfterValidator(tuple)]
Heads = _one_or_list(Count, IndexTuple)  # a layer or head: one index or a list of them
Keys = _one_or_list(int, IndexTuple)  # one key position (negative counts from the end) or a list
KeySet = _one_or_list(Annotated[Count, AfterValidator(lambda key: (key,))], IndexTuple)
Scopes = _one_or_list(Annotated[Literal[*SCOPES], AfterValidator(lambda scope: [scope])], list[Literal[*SCOPES]])
Gammas = Annotated[list[Annotated[Real, Field(gt=0)]], Field(min_length=1)]
Fraction = Annotated[Real, Field(ge=0.0, le=1.0)]
Span = Annotated[Indices, AfterValidator(_span)]  # [start, stop] key positions


class _Table(BaseModel):
    """A TOML table: strict types (TOML has them, so no "1" -> 1), no unknown keys, frozen once checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    also_known: ClassVar[tuple[str, ...]] = ()  # keys read before this table is checked

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        # extra="forbid" refuses the same keys; this also names the known ones, which pydantic's error does not
        if isinstance(data, dict) and cls.model_config.get("extra") == "forbid":
            known = (*cls.model_fields, *cls.also_known)
            for key in data:
                if key not in known:
                    raise _refusal(f"unknown key; known keys here: {', '.join(known)}", key)
        return data


class ModelTable(_Table):
    """``[model]``: the model and where it runs (``lens.load``'s placement; unset keys take its defaults)."""

    name: Text
    device: Text | None = None
    dtype: Text | None = None
    device_map: Text | None = None

    def placement(self) -> dict:
        return {key: value for key, value in self if key != "name" and value is not None}

    @model_validator(mode="after")
    def _placement_form(self) -> ModelTable:
        placement = self.placement()
        if "device" in placement and "device_map" in placement:
            raise _refusal("give device or device_map, not both: a device map places every module itself",
                           "device_map")
        for key, given in placement.items():
            try:  # the form only: whether this machine has the device is known when the run starts
                resolve_placement(**{key: given}, available=lambda: ("cuda", "mps"))
            except ValueError as err:
                raise _refusal(str(err), key) from None
        return self


class Task(_Table):
    """``[task]``: a built-in task by name or a JSONL file by path. Any other key is an option of the named
    task, typed by its default once the name is known (``TASK_TABLES``)."""

    model_config = ConfigDict(extra="allow")
    name: Literal[*TASKS] | None = None
    path: Text | None = None
    calibration: Count = 0
    test: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _source_and_size(self) -> Task:
        if (self.name is None) == (self.path is None):
            raise _refusal("give exactly one of task.name (a built-in task) or task.path (a JSONL file)")
        if self.calibration + self.test > MAX_EXAMPLES:
            raise _refusal(f"{self.calibration} calibration + {self.test} test examples is more than "
                           f"{MAX_EXAMPLES:,}; ask for fewer",
                           "test" if self.test > self.calibration else "calibration")
        return self


class _TaskWithOptions(Task):
    """``[task]`` with no keys beyond its fields; ``TASK_TABLES`` adds each task's options as fields."""

    model_config = ConfigDict(extra="forbid")


#: A task option's type, by the type of its default.
OPTION_TYPES = {bool: bool, str: str, float: Real, int: Annotated[int, Field(ge=0, le=MAX_TASK_OPTION)]}
#: ``[task]`` with the options of each built-in task (None: a JSONL file, which takes none).
TASK_TABLES: dict[str | None, type[Task]] = {
    name: create_model(f"Task_{name}", __base__=_TaskWithOptions, **{
        key: (OPTION_TYPES.get(type(default), Any), default)
        for key, default in (task_options(name) if name else {}).items()})
    for name in (*TASKS, None)
}


class _Edit(_Table):
    """Where an edit acts: every layer and head unless ``layer`` / ``head`` narrow it."""

    type: str
    layer: Heads | None = None
    head: Heads | None = None


class _Calibration(_Table):
    """What a calibration optimises on the calibration split."""

    method: str
    objective: Literal[*OBJECTIVES] = "accuracy"


GAMMAS = [0.5, 0.75, 1.25, 1.5, 2.0]
SEARCHED = {"layers": (Indices | None, None), "heads": (Indices | None, None)}  # default: every layer and head
#: Each edit type's fields beyond ``layer`` and ``head`` (``lens.edits``' classes, built by ``_spec_edits``):
#: field -> (type, default), ``...`` where the spec must give it.
EDIT_FIELDS: dict[str, dict[str, tuple]] = {
    "scale_attention": {"keys": (Keys, 0), "factor": (NonNegative, ...)},
    "key_bias": {"keys": (Keys, 0), "bias": (Real, ...)},
    "move_to_bos": {},
    "ablate": {"mode": (Literal["zero", "mean"], "zero")},
    "gate": {"factor": (NonNegative, ...)},
    "act": {"beta": (NonNegative, 0.4), "theta": (NonNegative, 0.1), "alpha": (NonNegative | None, None),
            "renormalise": (bool, False)},
    "var": {"sinks": (KeySet, (0,)), "target": (Span, ...), "keep": (Fraction, 0.6),
            "min_target": (NonNegative, 0.2), "max_sink_share": (NonNegative, 0.5)},
}
#: Each calibration method's fields beyond ``objective`` (``_calibrate``); profiling scales each unit by ``up``
#: and ``down`` before the gammas are searched.
CALIBRATION_FIELDS: dict[str, dict[str, tuple]] = {
    "zerotuning": {"scopes": (Scopes, list(SCOPES)), "gammas": (Gammas, GAMMAS), **SEARCHED},
    "zerotuning_profiled": {"unit": (Literal["layer", "head", "head_index"], "layer"),
                            "up": (Annotated[Real, Field(gt=1.0)], 1.5),
                            "down": (Annotated[Real, Field(gt=0.0, lt=1.0)], 0.67), "gammas": (Gammas, GAMMAS),
                            **SEARCHED},
    "act": {"beta": (NonNegative, 0.4), "theta": (NonNegative, 0.1), "alpha": (NonNegative | None, None),
            **SEARCHED, "max_heads": (Annotated[int, Field(ge=1)] | None, None)},
}
METHODS = tuple(CALIBRATION_FIELDS)
#: ``[[edits]]`` and ``[calibration]``: one model per type (method), the union tagged by that key.
EDIT_TABLES = tuple(create_model(f"Edit_{kind}", __base__=_Edit, type=(Literal[kind], ...), **fields)
                    for kind, fields in EDIT_FIELDS.items())
CALIBRATION_TABLES = tuple(create_model(f"Calibration_{kind}", __base__=_Calibration, method=(Literal[kind], ...),
                                        **fields) for kind, fields in CALIBRATION_FIELDS.items())
Edit = Annotated[Union[EDIT_TABLES], Field(discriminator="type")]
Calibration = Annotated[Union[CALIBRATION_TABLES], Field(discriminator="method")]
#: The choices of each tagged union, by the key that tags it.
UNIONS = {"type": tuple(EDIT_FIELDS), "method": METHODS}
#: Union tags pydantic puts in an error's location; they are not TOML keys (no field has these names).
UNION_TAGS = frozenset({"one", "many", "text", "table", *EDIT_FIELDS, *METHODS})


class Eval(_Table):
    batch_size: Annotated[int, Field(ge=1)] = 16
    prefix_cache: bool = True
    backend: Literal["auto", "eager", "chunked"] = "auto"
    bootstrap: Annotated[int, Field(ge=100)] = 2000
    confidence: Annotated[Real, Field(gt=0.0, lt=1.0)] = 0.95


class Output(_Table):
    db: Text | None = None


class SpecTable(_Table):
    """A whole spec, its keys in the order they are checked (and their errors reported)."""

    also_known = ("sweep",)  # read by _spec_sweep, which checks each of its runs without it

    name: Text | None = None  # default: the file's stem
    description: str = ""
    model: Annotated[Union[Annotated[Text, Tag("text")], Annotated[ModelTable, Tag("table")]],
                     Discriminator(lambda value: "table" if isinstance(value, dict) else "text")]
    seed: Count = 0
    metrics: Annotated[list[Literal[*METRICS]], Field(min_length=1)] = ["accuracy"]
    task: Task
    calibration: Calibration | None = None
    edits: Annotated[list[Edit], Field(min_length=1)] | None = None
    eval: Eval = Eval()
    output: Output = Output()

    @model_validator(mode="after")
    def _calibration_examples(self) -> SpecTable:
        if self.calibration and self.edits:
            raise _refusal("give either [calibration] (edits found on the calibration set) or [[edits]] "
                           "(fixed edits), not both", "calibration")
        if self.calibration and self.task.calibration < 1:
            raise _refusal("a [calibration] needs calibration examples: set task.calibration >= 1",
                           "task", "calibration")
        for i, edit in enumerate(self.edits or ()):
            if edit.type == "ablate" and edit.mode == "mean" and self.task.calibration < 1:
                raise _refusal("mean ablation averages over the calibration prompts: set task.calibration >= 1",
                               "edits", i, "mode")
        return self
