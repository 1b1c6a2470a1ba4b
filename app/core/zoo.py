"""The model zoo as the service knows it: names, what each is, parameter counts. The trainer
builds them (worker/training/models.py); this module imports no TensorFlow, so the API can
list and check them. tests/training/test_zoo.py builds each model and compares its count."""

from __future__ import annotations

from dataclasses import dataclass

# Every dataset reaches the trainer as 32x32 images (uploads and digits are resized), with
# its own number of channels.
INPUT = "32x32 images, any number of channels (every dataset is resized to 32x32)"


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    params: int  # for 32x32x3 inputs and 10 classes


ZOO: dict[str, ZooModel] = {
    model.name: model
    for model in (
        ZooModel(
            "minigooglenet",
            "MiniGoogLeNet as the seed's book builds it (Zhang et al. 2017's Miniception): "
            "inception and downsample modules, 7x7 average pool, dropout 0.5. The default.",
            1_656_250,
        ),
        ZooModel(
            "resnet20",
            "ResNet-20, He et al. 2016's CIFAR-10 network (3 stages of 3 basic blocks, 16/32/64 "
            "filters), with 1x1 projection shortcuts where the shape changes.",
            274_042,
        ),
        ZooModel(
            "resnet56",
            "ResNet-56: the same with 9 basic blocks per stage.",
            860_026,
        ),
        ZooModel(
            "vgg",
            "VGG-style: three stages of two 3x3 conv-BN-ReLU (64, 128, 256 filters) and a max "
            "pool, global average pooling, dropout 0.5.",
            1_150_666,
        ),
        ZooModel(
            "mlp",
            "A multi-layer perceptron for tiny inputs: 512 and 256 ReLU units, dropout 0.2.",
            1_707_274,
        ),
    )
}
