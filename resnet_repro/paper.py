"""Every number the paper publishes that this repository compares against, in one place.

Errors are in percent. Keys are registry model names; ImageNet entries whose shortcut option matters
are keyed (model, option), with None for plain nets.

The lookups take the data set by name, as a run records it ("CIFAR-10", "ImageNet"; a copy of one is named
"CIFAR-10 (JPEG copy)" and gets the numbers of the data set it copies, which the report shows as context only),
and a net's shortcut option as built (models.ModelSpec.shortcut: the family's default filled in,
None for plain nets): this module sits below the models and the report, and knows only the paper.
"""

PAPER_DATASETS = ("CIFAR-10", "ImageNet")  # the data sets of the paper's numbers, by the names runs record


def copied_dataset(dataset: str) -> str:
    """The data set a run's data is, or is a copy of: "CIFAR-10 (JPEG copy)" -> "CIFAR-10"."""
    return str(dataset).split(" (", 1)[0]


# Table 1: multiply-adds ("FLOPs") of the ImageNet nets by depth, 224x224 input.
TABLE1_MACS = {18: 1.8e9, 34: 3.6e9, 50: 3.8e9, 101: 7.6e9, 152: 11.3e9}

# Table 6: CIFAR-10 parameters by depth (plain and residual nets alike: option A adds none) and test error of the
# residual nets.
TABLE6_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6, 1202: 19.4e6}
TABLE6_ERROR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
                "resnet110": 6.43, "resnet1202": 7.93}
TABLE6_RESNET110_MEAN_STD = (6.61, 0.16)  # "6.43 is the best of 5 runs; mean 6.61 +- 0.16"

# Table 2: ImageNet validation top-1 error, 10-crop, option A shortcuts.
TABLE2_TOP1 = {"plain18": 27.94, "resnet18": 27.88, "plain34": 28.54, "resnet34": 25.03}

# Table 3: ImageNet validation (top-1, top-5) error, 10-crop.
TABLE3_TOP1_TOP5 = {
    ("plain34", None): (28.54, 10.02),
    ("resnet34", "A"): (25.03, 7.76),
    ("resnet34", "B"): (24.52, 7.46),
    ("resnet34", "C"): (24.19, 7.40),
    ("resnet50", "B"): (22.85, 6.71),
    ("resnet101", "B"): (21.75, 6.05),
    ("resnet152", "B"): (21.43, 5.71),
}

# Table 4: single-model multi-scale (fully-convolutional, sides 224..640) validation (top-1, top-5) error.
TABLE4_TOP1_TOP5 = {
    ("resnet34", "B"): (21.84, 5.71),
    ("resnet34", "C"): (21.53, 5.60),
    ("resnet50", "B"): (20.74, 5.25),
    ("resnet101", "B"): (19.87, 4.60),
    ("resnet152", "B"): (19.38, 4.49),
}

# Reference reproductions (not the paper): a widely used PyTorch CIFAR-10 reproduction (all 50k images,
# 200 epochs, selected on the test set) and fb.resnet.torch's 10-crop ImageNet (top-1, top-5).
PYTORCH_CIFAR10_REPRODUCTION_ERROR = {"resnet20": 8.27, "resnet32": 7.37, "resnet44": 6.90, "resnet56": 6.61,
                                      "resnet110": 6.32, "resnet1202": 6.18}
FB_RESNET_TORCH_TOP1_TOP5 = {"resnet18": (28.22, 9.42), "resnet34": (24.76, 7.35), "resnet50": (22.24, 6.08),
                             "resnet101": (21.08, 5.35), "resnet152": (20.69, 5.21)}


def paper_numbers(dataset: str, model: str, shortcut: str | None, protocol: str) -> list[dict]:
    """The paper's numbers for a net under one test protocol, each with the statistic it is (a single run,
    the best of N, a mean and std over N) and its table: [] where the paper publishes none for that protocol.
    Only CIFAR-10 (single view: Table 6) and ImageNet (10-crop: Tables 2, 3; multi-scale: Table 4) compare."""
    data = copied_dataset(dataset)
    if data == "CIFAR-10" and protocol == "single_view" and model in TABLE6_ERROR:
        if model == "resnet110":
            mean, std = TABLE6_RESNET110_MEAN_STD
            return [{"statistic": "best of 5", "top1": TABLE6_ERROR[model], "source": "Table 6"},
                    {"statistic": "mean±std of 5", "top1": mean, "top1_std": std, "source": "Table 6"}]
        return [{"statistic": "one run", "top1": TABLE6_ERROR[model], "source": "Table 6"}]
    if data != "ImageNet":
        return []
    key = (model, shortcut)
    if protocol == "ten_crop" and key in TABLE3_TOP1_TOP5:
        top1, top5 = TABLE3_TOP1_TOP5[key]
        if model in TABLE2_TOP1 and key[1] in (None, "A"):  # plain-34, ResNet-34 A: Table 2's top-1, again in Table 3
            return [{"statistic": "one run", "top1": top1, "source": "Tables 2, 3"},
                    {"statistic": "one run", "top5": top5, "source": "Table 3"}]
        return [{"statistic": "one run", "top1": top1, "top5": top5, "source": "Table 3"}]
    if protocol == "ten_crop" and model in TABLE2_TOP1 and key[1] in (None, "A"):
        return [{"statistic": "one run", "top1": TABLE2_TOP1[model], "source": "Table 2"}]
    if protocol == "multi_scale" and key in TABLE4_TOP1_TOP5:
        top1, top5 = TABLE4_TOP1_TOP5[key]
        return [{"statistic": "one run", "top1": top1, "top5": top5, "source": "Table 4"}]
    return []


def reference_number(dataset: str, model: str, shortcut: str | None, protocol: str) -> dict | None:
    """A reference reproduction's (top-1, top-5) error under the same protocol, with its name, or None."""
    data = copied_dataset(dataset)
    if data == "CIFAR-10" and protocol == "single_view" and model in PYTORCH_CIFAR10_REPRODUCTION_ERROR:
        return {"top1": PYTORCH_CIFAR10_REPRODUCTION_ERROR[model], "source": "akamaster/pytorch_resnet_cifar10"}
    if data == "ImageNet" and protocol == "ten_crop" and model in FB_RESNET_TORCH_TOP1_TOP5 \
            and shortcut == "B":
        top1, top5 = FB_RESNET_TORCH_TOP1_TOP5[model]
        return {"top1": top1, "top5": top5, "source": "facebookarchive/fb.resnet.torch"}
    return None
