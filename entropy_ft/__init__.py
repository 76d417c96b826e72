"""entropy-ft: entropy-based convolutional layer selection for transfer learning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("entropy-ft")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

SCHEMA_VERSION = 1
