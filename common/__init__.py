"""The bottom layer: small pure-Python helpers every part may import (command-line
``KEY=VALUE`` assignments, one-line messages for schema errors). Imports nothing of the
project."""
