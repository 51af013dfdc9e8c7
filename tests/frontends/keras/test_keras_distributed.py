"""Under ``tf.distribute.MirroredStrategy`` (2 logical CPU replicas, in a process of its own:
``mirrored_check.py``), training and evaluation equal one device's (issue 32): the Keras layer's
loss is each replica's share as Keras's own losses are (it was reported twice as large and SGD
steps were doubled), its metrics and sample weights are reduced as on one device, and a row
the replicas share (every candidate) reaches Keras's Adam with its whole gradient once (the
layer's and the ``tf.nn`` drop-in's gradients)."""

import json
import os
import subprocess
import sys

import pytest

from keras_layer_helpers import BACKEND

pytestmark = [pytest.mark.slow, pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")]


@pytest.fixture(scope="module")
def mirrored():
    script = os.path.join(os.path.dirname(__file__), "mirrored_check.py")
    out = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["sgd", "adam", "weighted", "drop_in_adam"])
def test_two_replicas_train_the_table_as_one_device(mirrored, case):
    result = mirrored[case]
    assert result["moved"] > 0.05  # the steps moved the table ...
    assert result["table"] < 1e-5  # ... to where one device moves it


@pytest.mark.parametrize("case", ["sgd", "weighted"])
def test_two_replicas_report_one_devices_loss_and_metrics(mirrored, case):
    result = mirrored[case]
    assert result["evaluate"] < 1e-5, result
    assert result["fit_logs"] < 1e-5, result
