"""Numbers every module shares; import them, never retype them (timm's `timm.data.constants` idea)."""

from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

DEFAULT_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
DEFAULT_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD
DEFAULT_IMAGE_SIZE = 128
# Dermoscopy lesions are usually centred and fill most of the frame: crop little at eval time.
DEFAULT_CROP_PCT = 0.95
DEFAULT_INTERPOLATION = "bicubic"

# PIL's own bomb guard is a warning up to 2x its limit; we refuse anything above this outright.
MAX_IMAGE_PIXELS = 64_000_000
# Images are decoded once and cached with their short side capped to this, so a 6000x4000 upload
# does not keep 72 MB of pixels alive in the training cache.
CACHE_SHORT_SIDE = 256

MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
MODEL_CARD_FILE = "README.md"
MANIFEST_FILE = "split_manifest.csv"
ONNX_FILE = "model.onnx"

# The Space variable naming the Hub model(s) the app serves: `skinlesion publish space --model-id` sets it.
MODEL_ID_ENV = "MODEL_ID"  # comma-separated model folders / Hub ids, each ID[@REV]

# Colour-constancy methods a model folder may ask for (transforms.ShadesOfGray implements the one).
COLOR_CONSTANCY = ("none", "shades_of_gray")
