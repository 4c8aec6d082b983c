"""Hub weights that are not here fail at once, in one line, with no network attempt when the hub
cannot be used; cached weights load offline when the hub is unreachable."""
import socket

import pytest
from huggingface_hub import constants

from nexus_gen.scoring import hub
from nexus_gen.scoring.clip import load_clip
from nexus_gen.scoring.dino import load_dino
from nexus_gen.scoring.hub import ModelUnavailableError


@pytest.fixture
def no_network(monkeypatch):
    """Online mode, the hub endpoint a closed local port, and every socket connect recorded."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")
    for v in hub._PROXY_VARS:
        monkeypatch.delenv(v, raising=False)
    hub._probe.cache_clear()
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    hub._probe.cache_clear()


def test_uncached_weights_without_a_hub_fail_fast_in_one_line(no_network):
    with pytest.raises(ModelUnavailableError) as e:
        load_clip("small")
    msg = str(e.value)
    assert msg == ("CLIP 'small': timm/vit_base_patch32_clip_224.openai is not in the local Hugging "
                   "Face cache and 127.0.0.1:9 cannot be reached; use the offline 'tiny' profile, pass "
                   "'ViT-B-32-quickgelu:/path/weights.safetensors' or 'local-dir:/path', or run once "
                   "online to fill the cache")
    with pytest.raises(ModelUnavailableError, match=r"^DINO 'paper': facebook/dino-vits16 is not in "
                                                    r"the local Hugging Face cache and 127.0.0.1:9"):
        load_dino("paper")
    # one probe connection in all (cached per process), no download attempts with retries
    assert no_network == [("127.0.0.1", 9)]


def test_offline_mode_fails_without_touching_the_network(no_network, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match=r"the hub is offline \(HF_HUB_OFFLINE=1\)"):
        load_clip("paper")
    assert no_network == []


def test_cached_weights_are_read_offline_when_the_hub_is_unreachable(no_network, monkeypatch):
    monkeypatch.setattr(hub, "cached_file", lambda repo, name: f"/cache/{repo}/{name}")
    seen = []
    with hub.hub_files("X", "org/model", ["config.json"], "fix it"):
        seen.append(constants.is_offline_mode())
    assert seen == [True] and constants.is_offline_mode() is False
