"""The README's streaming example runs as written against a real stack."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from modelvc.stack import Stack

pytestmark = pytest.mark.broker
README = Path(__file__).parents[2] / "README.md"


def readme_block(name: str) -> str:
    text = README.read_text()
    match = re.search(
        rf"<!-- readme-example:{name} -->\s*```python\n(.*?)```\s*<!-- /readme-example -->",
        text,
        re.S,
    )
    assert match, f"README has no example {name!r}"
    return match.group(1)


def test_streaming_example(tmp_path: Path, bootstrap: str, namespace: str) -> None:
    stack = Stack.up(tmp_path / "home", bootstrap=bootstrap, namespace=namespace, workers=1)
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(300, 2))
        booster = lgb.train(
            {"objective": "binary", "verbosity": -1, "num_leaves": 4},
            lgb.Dataset(x, (x[:, 0] > 0).astype(int), feature_name=["tenure", "spend"]),
            num_boost_round=5,
        )
        booster.save_model(str(tmp_path / "churn.txt"))
        c = stack.client()
        c.create("churn")
        head = c.commit("churn", c.upload(tmp_path / "churn.txt")["sha256"], "v1")["head"]
        code = readme_block("streaming")
        code = code.replace('"127.0.0.1:9092"', repr(stack.settings.bootstrap))
        code = code.replace(
            "FeatureProducer(" + repr(stack.settings.bootstrap) + ")",
            f"FeatureProducer({stack.settings.bootstrap!r}, {stack.settings.features_topic!r})",
        )
        code = code.replace(
            "from_beginning=True,",
            f"topic={stack.settings.predictions_topic!r}, from_beginning=True,",
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
        line = out.getvalue().strip()
        expected = booster.predict(np.array([[3.0, 42.5]]))[0]
        assert line == f"readme-1 main {head[:10]} [{expected}]"
    finally:
        stack.down()
