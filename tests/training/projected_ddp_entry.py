"""`simpsonize.cli` with the tiny stand-in for the projected judge's pretrained features, in a process of its own: a
DDP run under torchrun, or an earlier commit's trainer (the tests' monkeypatch does not reach other processes)."""

import sys

import simpsonize.training.projected
from simpsonize.cli import main
from tests.training.conftest import TinyFeatures

simpsonize.training.projected.pretrained_features = lambda input_size=None: TinyFeatures()
sys.exit(main(sys.argv[1:]))
