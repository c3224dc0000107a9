"""The software version reported upstream and on the status page."""

from importlib.metadata import PackageNotFoundError, version

try:
    SOFTWARE_VERSION = version("smartpole")
except PackageNotFoundError:  # running from a checkout that was never installed
    SOFTWARE_VERSION = "0+checkout"
