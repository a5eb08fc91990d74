"""The label catalog: the datasets a ledger can name, their heads, class order and majority rates.

The class order is the sorted order `pd.get_dummies` produced in the original notebook. It is
written down here instead of being derived from the data, so a subset that lacks a class still
gets the right one-hot width and the same column meaning. Each head is one model output, named
`output_name(head)`; the labels the pipeline yields are keyed by those names. Pure Python: the
ledger and the metric contract import it.
"""

HVC_HEADS = {
    "gender": ("female", "male"),
    "image_quality": ("Average", "Bad", "Good"),
    "age": ("15-25", "25-35", "35-45", "45-55", "55+"),
    "weight": ("normal-healthy", "over-weight", "slightly-overweight", "underweight"),
    "bag": ("Daily/Office/Work Bag", "Grocery/Home/Plastic Bag", "None"),
    "footwear": ("CantSee", "Fancy", "Normal"),
    "pose": ("Back", "Front-Frontish", "Side"),
    "emotion": ("Angry/Serious", "Happy", "Neutral", "Sad"),
}

# Head name -> the CSV column it is read from (only three differ from the head name).
HVC_CSV_COLUMNS = {
    "gender": "gender",
    "image_quality": "imagequality",
    "age": "age",
    "weight": "weight",
    "bag": "carryingbag",
    "footwear": "footwear",
    "pose": "bodypose",
    "emotion": "emotion",
}

HVC_CSV_HEADER = (
    "filename", "gender", "imagequality", "age", "weight",
    "carryingbag", "footwear", "emotion", "bodypose", "image_path",
)

# Share of the most frequent class on the real 6,000-row subset: a head at this rate has
# learned nothing. The results table reports the primary head's lift over it.
HVC_MAJORITY_RATES = {
    "gender": 0.556, "image_quality": 0.550, "age": 0.397, "weight": 0.630,
    "bag": 0.570, "footwear": 0.436, "emotion": 0.732, "pose": 0.629,
}

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

DATASET_HEADS = {
    "hvc": HVC_HEADS,
    # Single-head dataset: its metrics carry no head name (see harness.core.metrics).
    "cifar10": {"class": CIFAR10_CLASSES},
}

# CIFAR-10's validation set (its 10,000-image test batch) holds 1,000 images of each class.
MAJORITY_RATES = {"hvc": HVC_MAJORITY_RATES, "cifar10": {"class": 0.1}}

DATASETS = tuple(DATASET_HEADS)


def heads_for(dataset: str) -> dict:
    """Head name -> class names for a dataset named in a ledger."""
    return DATASET_HEADS[dataset]


def majority_rates(dataset: str) -> dict:
    """Head -> share of its most frequent class ({} when unknown)."""
    return MAJORITY_RATES.get(dataset, {})


def output_name(head: str) -> str:
    """The model output (and label key) of a head: `gender_output`."""
    return f"{head}_output"
