"""The app's model work runs on one long-lived thread (skinlesion.app.memory), whichever thread asks."""

from __future__ import annotations

import threading

import pytest

from skinlesion.app.memory import on_inference_thread


def test_every_caller_gets_the_same_inference_thread():
    seen: list[int] = []

    def ask():
        seen.append(on_inference_thread(threading.get_ident))

    callers = [threading.Thread(target=ask) for _ in range(5)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(seen) == 5 and len(set(seen)) == 1
    assert seen[0] not in {t.ident for t in callers} | {threading.get_ident()}


def test_results_and_exceptions_come_back_to_the_caller():
    assert on_inference_thread(sum, [1, 2, 3]) == 6
    assert on_inference_thread(dict, a=1) == {"a": 1}
    with pytest.raises(ZeroDivisionError):
        on_inference_thread(lambda: 1 / 0)
    assert on_inference_thread(lambda: "still serving") == "still serving"


def test_analyze_runs_explain_on_the_inference_thread(tiny_model_folder, monkeypatch):
    from conftest import synthetic_lesion

    from skinlesion.app import callbacks
    from skinlesion.app.registry import ModelRegistry, ModelSpec
    from skinlesion.inference.predictor import Predictor

    threads: list[str] = []
    original = Predictor.explain

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "explain", spy)
    registry = ModelRegistry([ModelSpec(str(tiny_model_folder))])
    analysis = callbacks.analyze(registry, synthetic_lesion(1, (96, 72)))
    assert analysis.prediction.label in ("bkl", "mel", "nv")
    assert threads and all(name.startswith("skinlesion-inference") for name in threads)
