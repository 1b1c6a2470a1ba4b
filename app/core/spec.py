"""The job spec: every training field defined once, with its type, default, bounds and meaning.

`TrainingSpec` is what the trainer is configured with (`python -m worker.training --config`);
`JobSpec` adds the fields only the service uses (name, priority) and is the body of
`POST /jobs`. The `trainyard train` and `trainyard submit` flags (app/core/spec_flags.py) and
the README's spec table (app/core/spec_doc.py) are derived from these classes, so a new field
is one edit here.

This module imports only pydantic: the trainer process loads it before TensorFlow, and the
API loads it without TensorFlow.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

# Ids are INTEGER columns: 32-bit signed on PostgreSQL. A larger id is a 422 at the door,
# never an overflow in the driver (a 500).
MAX_ID = 2**31 - 1
DatasetId = Annotated[int, Field(ge=1, le=MAX_ID)]
ModelId = Annotated[int, Field(ge=1, le=MAX_ID)]


def _storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and no database takes a lone surrogate (JSON's
    # "\ud800" decodes to one); nothing a person types needs either.
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from error
    return value


# Free text a person gives (a job's or dataset's name).
Label = Annotated[str, AfterValidator(_storable_text)]
BuiltinDataset = Literal["cifar10", "digits", "synthetic"]
BUILTIN_DATASETS: tuple[str, ...] = ("cifar10", "digits", "synthetic")

# Validation-context key: set by the standalone trainer, which may train on a local .npz
# path. The API never sets it, so a request can never name a file on the server.
LOCAL_FILES = "local_files"

# bn_momentum "auto": the book's 0.99 (Keras' default) when the training split holds at least
# BN_AUTO_MIN_BATCHES batches of `batch_size` images, else 0.9. At 0.99 the moving statistics
# that validation uses keep most of their initial values for the first epochs of a small data
# set (digits at batch 64: 21 steps per epoch, validation accuracy at chance for 3 epochs);
# at 0.9 they follow the data within an epoch. Counted in per-replica batches, so the value
# does not change with the number of GPUs a job gets; CIFAR-10 (781 batches) keeps 0.99.
# The zoo's names (app/core/zoo.py describes each; a test holds the two lists together).
ModelName = Literal["minigooglenet", "resnet20", "resnet56", "vgg", "mlp"]
Augment = Literal["shift_flip", "pad_crop", "none"]
# What `augment` takes: a choice, or true/false as before the choices (the schema says so).
AugmentField = Annotated[
    Augment,
    WithJsonSchema(
        {"anyOf": [{"enum": list(typing.get_args(Augment)), "type": "string"}, {"type": "boolean"}]}
    ),
]

BN_MOMENTUM_BOOK = 0.99
BN_MOMENTUM_SMALL_DATA = 0.9
BN_AUTO_MIN_BATCHES = 200


# The rule between fields (TrainingSpec._one_kind_of_replica) in JSON Schema, for the OpenAPI
# document: cpu_replicas above 0 needs gpus, given, 0 (gpus defaults to 1).
ONE_KIND_OF_REPLICA: dict[str, Any] = {
    "if": {"properties": {"cpu_replicas": {"minimum": 1}}, "required": ["cpu_replicas"]},
    "then": {"properties": {"gpus": {"const": 0}}, "required": ["gpus"]},
}
# And `init: "uploaded"` needs an uploaded architecture's id as `model`.
INIT_FROM_AN_UPLOAD: dict[str, Any] = {
    "if": {"properties": {"init": {"const": "uploaded"}}, "required": ["init"]},
    "then": {"properties": {"model": {"type": "integer"}}, "required": ["model"]},
}


class TrainingSpec(BaseModel):
    """One training run; the defaults are the seed's recipe (MiniGoogLeNet on CIFAR-10)."""

    # strict: "3" is not an int and true is not a number; a lab's script gets told, not
    # guessed at. NaN and infinities are never a setting.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"allOf": [ONE_KIND_OF_REPLICA, INIT_FROM_AN_UPLOAD]},
    )

    model: ModelName | ModelId | SkipJsonSchema[str] = Field(
        default="minigooglenet",
        description="Architecture from the zoo (`GET /models`): `minigooglenet` (the seed's, "
        "as the book builds it), `resnet20`, `resnet56`, `vgg`, `mlp`; or an uploaded "
        "architecture's id (`POST /models`); `trainyard train` also takes a path to a "
        ".keras or model JSON file.",
    )
    init: Literal["random", "uploaded"] = Field(
        default="random",
        description="`random`: train from freshly initialised weights; `uploaded`: start from "
        "the weights in the uploaded .keras file (only for an uploaded architecture that has "
        "them).",
    )
    dataset: BuiltinDataset | DatasetId | SkipJsonSchema[str] = Field(
        default="cifar10",
        description="Training data: `cifar10`, `digits` (scikit-learn's bundled 8x8 digits "
        "resized to 32x32x3; 1347 train / 450 test images), `synthetic` (a small generated "
        "set: 256 / 64), or an uploaded dataset's id (`POST /datasets`); `trainyard train` "
        "also takes a path to an .npz file.",
    )
    gpus: int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs to train on (MirroredStrategy over them); 0 trains on the CPU.",
    )
    cpu_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Only with `gpus` set to 0 (its default is 1): split the CPU into N "
        "logical devices, N real MirroredStrategy replicas without a GPU.",
    )
    epochs: int = Field(default=70, ge=1, le=1000, description="Passes over the training data.")
    lr: float = Field(default=0.005, gt=0, le=10, description="Initial learning rate.")
    batch_size: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Images per replica per step (global batch = batch_size x replicas).",
    )
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        default="sgd",
        description="`sgd` (the seed's: SGD with `momentum`), `adam`, or `adamw` (Adam with "
        "decoupled weight decay, Loshchilov and Hutter 2019).",
    )
    momentum: float = Field(default=0.9, ge=0, le=1, description="SGD momentum.")
    weight_decay: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Decoupled weight decay, as Keras applies it (each step w -= lr x "
        "weight_decay x w). Default: 0 for `sgd` and `adam` (the seed has none), Keras' 0.004 "
        "for `adamw`.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Label smoothing of the cross-entropy (Szegedy et al. 2016); 0: none, as "
        "the seed.",
    )
    bn_momentum: Literal["auto"] | Annotated[float, Field(gt=0, lt=1)] = Field(
        default="auto",
        description=f"BatchNormalization momentum. `auto`: the book's {BN_MOMENTUM_BOOK} when "
        f"the training split holds at least {BN_AUTO_MIN_BATCHES} batches of `batch_size` "
        f"images (CIFAR-10), else {BN_MOMENTUM_SMALL_DATA}, which learns visibly on small "
        "data; the value used is shown in the job's `resolved`.",
    )
    augment: AugmentField = Field(
        default="shift_flip",
        description="Training-time augmentation: `shift_flip`, the seed's (width/height shift "
        "0.1, nearest fill, horizontal flip); `pad_crop`, the CIFAR standard (pad 4 pixels "
        "with zeros, random 32x32 crop, horizontal flip); `none`. true and false, from "
        "before the choices, mean `shift_flip` and `none`.",
    )
    lr_power: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="Power of the poly decay `lr x (1 - epoch/epochs)^power` (1: the seed's "
        "linear decay).",
    )
    lr_scaling: Literal["none", "linear"] = Field(
        default="none",
        description="`linear`: initial LR x replicas after a short warm-up; `none`: as the seed.",
    )
    mixed_precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="`auto`: float16 on GPUs that support it, bfloat16 on CPUs with AMX or "
        "AVX-512 BF16, else float32.",
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**31 - 1, description="Fixes initialisation and shuffling."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _integral_number_is_an_integer(cls, value: Any) -> Any:
        # JSON has one kind of number: to JSON Schema, so to the OpenAPI document's "integer",
        # 7.0 is the integer 7 (and Python's json module writes a float 7 as 7.0). Taken as 7;
        # 7.5, "7" and true are still refused.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_was_a_switch(cls, value: Any) -> Any:
        # Specs stored and scripts written when augment was on or off.
        if value is True:
            return "shift_flip"
        if value is False:
            return "none"
        return value

    @field_validator("model")
    @classmethod
    def _model_file_only_when_local(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str) or value in typing.get_args(ModelName):
            return value
        local = bool(info.context and info.context.get(LOCAL_FILES))
        if local and value.endswith((".keras", ".json")):
            return value
        named = ", ".join(typing.get_args(ModelName))
        other = "a path to a .keras or .json file" if local else "an uploaded model's id"
        raise ValueError(f"{value[:80]!r} is neither one of {named} nor {other}")

    @field_validator("dataset")
    @classmethod
    def _dataset_file_only_when_local(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str) or value in BUILTIN_DATASETS:
            return value
        if info.context and info.context.get(LOCAL_FILES) and value.endswith(".npz"):
            return value
        named = ", ".join(BUILTIN_DATASETS)
        if info.context and info.context.get(LOCAL_FILES):
            raise ValueError(f"{value!r} is neither one of {named} nor a path to an .npz file")
        raise ValueError(f"{value!r} is neither one of {named} nor an uploaded dataset's id")

    @field_validator("cpu_replicas")
    @classmethod
    def _one_kind_of_replica(cls, value: int, info: ValidationInfo) -> int:
        gpus = info.data.get("gpus", 0)  # validated before (field order); absent if invalid
        if value and gpus:
            raise ValueError(
                f"cpu_replicas needs gpus = 0 (got gpus={gpus}): a job trains on GPUs or on the CPU"
            )
        return value

    def training_fields(self) -> dict[str, Any]:
        """The fields the trainer takes (a JobSpec's service-only fields left out)."""
        return self.model_dump(include=set(TrainingSpec.model_fields))


class JobSpec(TrainingSpec):
    """A training job as submitted to the service: the training fields plus its own."""

    name: Label | None = Field(default=None, max_length=200, description="A label for people.")
    priority: int = Field(
        default=0,
        ge=-100,
        le=100,
        description="Higher starts first; equal priorities start in submission order. Only "
        "admins may set it above 0.",
    )
    keep_checkpoints: bool = Field(
        default=False,
        description="Keep the per-epoch checkpoints once the job has ended; by default they "
        "are removed then (the model, metrics and log are kept).",
    )


ADAMW_WEIGHT_DECAY = 0.004  # Keras' default for AdamW


def resolve_weight_decay(spec: TrainingSpec) -> float:
    """The weight decay a run uses (see TrainingSpec.weight_decay)."""
    if spec.weight_decay is not None:
        return spec.weight_decay
    return ADAMW_WEIGHT_DECAY if spec.optimizer == "adamw" else 0.0


def resolve_bn_momentum(spec: TrainingSpec, train_images: int) -> float:
    """The BatchNormalization momentum a run uses (see BN_AUTO_MIN_BATCHES)."""
    if spec.bn_momentum != "auto":
        return float(spec.bn_momentum)
    batches = train_images // spec.batch_size
    return BN_MOMENTUM_BOOK if batches >= BN_AUTO_MIN_BATCHES else BN_MOMENTUM_SMALL_DATA
