"""`embedding.text_prefix`: prepended in one place (`build_embedder`), so the daemon's and
replay's start, the pipeline and `detector calibrate` embed alike; recorded in the
calibration artifact, whose mismatch is refused like a model mismatch. Against the real
fake API, whose vectors are a deterministic function of the text it receives."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from detector.calibration.artifact import calibrate, check_compatible, load_artifact
from detector.calibration.samples import read_texts
from detector.calibration.sections import ModelInfo
from detector.calibration.stats import split
from detector.cli import main
from detector.config import Settings, load_settings
from detector.embedders import build_embedder
from detector.errors import ConfigError
from detector.operating import startup
from devtools.fakeapi import FakeEmbeddingServer, fake_embedding
from devtools.sample_data import stream

KEY = "sk-prefix"
SEED = Path("config/normal_comments.jsonl")
DIM = 256


@pytest.fixture(scope="module")
def server() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer(api_key=KEY) as srv:
        yield srv


def embedding(server: FakeEmbeddingServer, prefix: str) -> dict[str, object]:
    return {"backend": "openai", "model": "e5-fake", "dimension": DIM, "api_key": KEY,
            "base_url": server.openai_base_url, "text_prefix": prefix}


def settings_for(server: FakeEmbeddingServer, prefix: str, **scoring: object) -> Settings:
    return load_settings("config/detector.yaml", embedding=embedding(server, prefix),
                         scoring=scoring)


def mean_direction(texts: list[str]) -> np.ndarray:
    rows = np.stack([fake_embedding(t, DIM) for t in texts]).astype(np.float64)
    total = rows.sum(axis=0)
    unit: np.ndarray = total / np.linalg.norm(total)
    return unit


class TestEmbedder:
    async def test_every_text_reaches_the_api_with_the_prefix(
        self, server: FakeEmbeddingServer
    ) -> None:
        """the built embedder returns the vectors of the prefixed texts; name unchanged."""
        embedder = build_embedder(settings_for(server, "query: "))
        try:
            got = await embedder.embed(["great blender", "late delivery"])
        finally:
            await embedder.aclose()
        want = np.stack([fake_embedding(f"query: {t}", DIM)
                         for t in ["great blender", "late delivery"]])
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert embedder.name == "e5-fake"


class TestStart:
    async def test_seed_start_embeds_with_the_prefix_and_is_another_base(
        self, server: FakeEmbeddingServer
    ) -> None:
        """the daemon's (and replay's) start embeds the seed with the prefix; the base's
        origin changes with the prefix, so shared state of another prefix is not reused."""
        texts = read_texts(SEED, load_settings("config/detector.yaml").input)
        states = {}
        for prefix in ("", "passage: "):
            settings = settings_for(server, prefix)
            embedder = build_embedder(settings)
            try:
                states[prefix] = await startup.initial_state(settings, embedder)
            finally:
                await embedder.aclose()
        np.testing.assert_allclose(states["passage: "].centroid.vector,
                                   mean_direction([f"passage: {t}" for t in texts]), atol=1e-5)
        np.testing.assert_allclose(states[""].centroid.vector, mean_direction(texts),
                                   atol=1e-5)
        assert states[""].origin != states["passage: "].origin


def write_inputs(server: FakeEmbeddingServer, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """400 normal comments and a configuration naming the fake API (key from the env)."""
    normal = tmp_path / "normal.jsonl"
    texts = [c.text for c in stream(400, anomaly_rate=0.0, seed=31)]
    normal.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
    config = tmp_path / "detector.yaml"
    body = yaml.safe_load(Path("config/detector.yaml").read_text())
    body["embedding"] = {**embedding(server, ""), "api_key": None}
    config.write_text(yaml.safe_dump(body))
    return normal, config, texts


class TestCalibration:
    async def test_artifact_records_the_prefix_and_a_mismatch_is_refused(
        self, server: FakeEmbeddingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """calibrate embeds with the prefix and records it; the daemon refuses the artifact
        under another prefix (or none) and accepts it under the same one; the embedding
        cache does not serve unprefixed vectors for prefixed texts."""
        normal, config, texts = write_inputs(server, tmp_path)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)

        def calibrate(prefix: str, out: Path) -> int:
            monkeypatch.setenv("DETECTOR_EMBEDDING__TEXT_PREFIX", prefix)
            return main(["--config", str(config), "calibrate", "--normal", str(normal),
                         "--bootstrap", "50", "--holdout", "0.75", "--out", str(out),
                         "--cache-dir", str(tmp_path / "cache")])

        plain, prefixed = tmp_path / "plain.json", tmp_path / "prefixed.json"
        assert await asyncio.to_thread(calibrate, "", plain) == 0
        before = server.stats.texts
        assert await asyncio.to_thread(calibrate, "query: ", prefixed) == 0
        assert server.stats.texts - before == len(set(texts)), "no cache hits across prefixes"

        artifact = load_artifact(prefixed)
        assert artifact.model.text_prefix == "query: "
        train, _ = split(len(texts), 0.75, 0)
        centroid = np.asarray(artifact.centroid["sum"]) / np.linalg.norm(artifact.centroid["sum"])
        np.testing.assert_allclose(
            centroid, mean_direction([f"query: {texts[i]}" for i in train]), atol=1e-5)
        assert load_artifact(plain).model.text_prefix == ""

        for prefix, path in (("", prefixed), ("passage: ", prefixed), ("query: ", plain)):
            settings = settings_for(server, prefix, calibration_file=str(path))
            embedder = build_embedder(settings)
            try:
                with pytest.raises(ConfigError, match="text_prefix"):
                    await startup.initial_state(settings, embedder)
            finally:
                await embedder.aclose()
        settings = settings_for(server, "query: ", calibration_file=str(prefixed))
        embedder = build_embedder(settings)
        try:
            state = await startup.initial_state(settings, embedder)
        finally:
            await embedder.aclose()
        assert (state.threshold, state.source) == (artifact.threshold, "calibration")

    def test_artifacts_without_a_prefix_field_mean_no_prefix(self) -> None:
        """an artifact from before text prefixes existed is accepted without a prefix and
        refused with one."""
        rows = np.eye(4)[[0, 0, 1, 0, 0, 0]] + 0.1
        result = calibrate(rows[:2], rows[2:], None, model="m", dimension=4,
                           target_fpr=0.9, bootstrap=10)
        old = result.artifact.model_copy(update={"model": ModelInfo(name="m", dimension=4)})
        check_compatible(old, "m", 4)
        check_compatible(old, "m", 4, "")
        with pytest.raises(ConfigError, match=r"text_prefix '' but the configured one is 'q: '"):
            check_compatible(old, "m", 4, "q: ")
