"""`simpsonize.cli` with the tiny stand-in for the projected judge's pretrained features, for a DDP run under torchrun
(the tests' monkeypatch does not reach the processes torchrun starts)."""

import sys

import simpsonize.training.projected
from simpsonize.cli import main
from tests.training.conftest import TinyFeatures

simpsonize.training.projected.pretrained_features = lambda input_size=None: TinyFeatures()
sys.exit(main(sys.argv[1:]))
