"""SearchSpace: typed parameters, conditional sampling, presets and their exact round trip."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import optuna
import pytest
import yaml

from ciss_autoimpute.data.layout import FeatureLayout
from ciss_autoimpute.models.families.cissvae import layer_order
from ciss_autoimpute.models.registry import available_models, build_model, get_model_class
from ciss_autoimpute.training.config import configs_from_dict
from ciss_autoimpute.tuning.params import Categorical, Fixed, Float, Int
from ciss_autoimpute.tuning.presets import available_presets
from ciss_autoimpute.tuning.search_space import SearchSpace, TrialConfig

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["cissvae", "default", "mnar", "mnar_correction", "quick"]

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=4)
    )


def _run(space: SearchSpace, n_trials: int, seed: int = 0) -> tuple[optuna.Study, list[TrialConfig]]:
    """Sample ``n_trials`` configs with a cheap objective that still depends on the config."""
    study = _study(seed)
    configs: list[TrialConfig] = []
    for _ in range(n_trials):
        trial = study.ask()
        cfg = space.sample(trial)
        configs.append(cfg)
        dims = cfg.model_params.get("hidden_dims", [1])
        study.tell(trial, float(sum(dims)) / 100.0 + cfg.train_params.get("lr", 0.0))
    return study, configs


def _build(cfg: TrialConfig) -> dict:
    """Build the model the config describes (2 clusters, 3 numeric columns); its checked parameters."""
    get_model_class(cfg.model).resolve_params(cfg.model_params)  # raises on any meta key left behind
    params = dict(cfg.model_params)
    if params.get("signs") == "data":
        params["signs"] = [1, -1, 0]  # what the Imputer reads from the data before it builds the model
    model = build_model(cfg.model, FeatureLayout.all_numeric(3), 2, params, seed=0)
    return model.params


def _check_valid(space: SearchSpace, cfg: TrialConfig, params: dict) -> None:
    """A sampled config builds its model and has consistent structure and valid training options."""
    assert cfg.model in space.family_names
    resolved = _build(cfg)
    fam = space.families[cfg.model]
    if "num_hidden_layers" in fam:
        depth_param = fam["num_hidden_layers"]
        depth = depth_param.value if isinstance(depth_param, Fixed) else params[f"{cfg.model}.num_hidden_layers"]
        assert len(resolved["hidden_dims"]) == depth
        # Widths are sampled only for layers that exist.
        for i in range(8):
            assert (f"{cfg.model}.hidden_dim_{i}" in params) == (
                i < depth and not isinstance(fam.get(f"hidden_dim_{i}", fam.get("hidden_dim")), Fixed)
            )
    for key in ("layer_order_enc", "layer_order_dec"):
        if key in cfg.model_params:
            assert len(cfg.model_params[key]) == len(cfg.model_params["hidden_dims"])
            assert resolved[key] == cfg.model_params[key]
    configs_from_dict(dict(cfg.train_params))


# ------------------------------------------------------------------ presets and files
def test_available_presets_lists_the_four():
    assert available_presets() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_json_round_trip_is_exact(name):
    space = SearchSpace.preset(name)
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space
    assert again.to_dict() == space.to_dict()
    assert SearchSpace.from_json(space.to_json()) == space
    # Floats survive bit for bit, not just approximately.
    for fam, params in again.families.items():
        for pname, p in params.items():
            assert p == space.families[fam][pname]
    assert again.train == space.train


@pytest.mark.parametrize("name", PRESETS)
def test_preset_yaml_round_trip_is_exact(name, tmp_path):
    space = SearchSpace.preset(name)
    assert SearchSpace.from_yaml(space.to_yaml()) == space
    path = tmp_path / f"{name}.yaml"
    space.to_yaml(path)
    assert SearchSpace.from_file(path) == space
    assert yaml.safe_load(path.read_text())["families"].keys() == space.families.keys()


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_matches_code(name):
    path = ROOT / "search_spaces" / f"{name}.json"
    assert path.is_file(), f"run scripts/write_presets.py to create {path}"
    assert SearchSpace.from_file(path) == SearchSpace.preset(name), "run scripts/write_presets.py"
    # The file is the pretty, sorted form the script writes.
    assert path.read_text(encoding="utf-8") == SearchSpace.preset(name).to_json()


def test_search_spaces_directory_holds_exactly_the_presets():
    assert sorted(p.stem for p in (ROOT / "search_spaces").glob("*.json")) == PRESETS


def test_write_presets_script_writes_loadable_files(tmp_path):
    spec = importlib.util.spec_from_file_location("write_presets", ROOT / "scripts" / "write_presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    for name in PRESETS:
        assert SearchSpace.from_file(tmp_path / f"{name}.json") == SearchSpace.preset(name)
    assert module.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "quick.json").write_text("{}", encoding="utf-8")
    assert module.main(["--check", "--out", str(tmp_path)]) == 1


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match=r"Unknown search-space preset 'fast'.*\['cissvae', 'default', 'mnar'"):
        SearchSpace.preset("fast")


def test_default_preset_covers_every_builtin_family_but_notmiwae():
    builtin = {f for f in available_models() if get_model_class(f).__module__.startswith("ciss_autoimpute.")}
    assert {"cissvae", "gain", "mida", "miwae", "notmiwae", "vae", "mice", "missforest"} <= builtin
    # not-MIWAE's MNAR shift is invisible to the holdout of observed cells; it lives in "mnar".
    for preset in ("default", "quick"):
        assert set(SearchSpace.preset(preset).family_names) == builtin - {"notmiwae"}, preset


def test_quick_preset_is_small():
    space = SearchSpace.preset("quick")
    train = space.train
    assert isinstance(train["epochs"], Int) and 20 <= train["epochs"].low and train["epochs"].high <= 60
    assert train["max_loops"].value <= 5
    for fam in space.family_names:
        fam_space = space.families[fam]
        depth = fam_space.get("num_hidden_layers", fam_space.get("n_layers"))
        if depth is not None:  # the classical families have no layers
            assert depth.high <= 2, fam


def test_mnar_preset_reads_self_masking_signs_from_the_data_and_starts_from_the_defaults():
    from ciss_autoimpute.models.families.notmiwae import NotMIWAE
    from ciss_autoimpute.training import TrainConfig
    from ciss_autoimpute.tuning.autotune import warm_start_params

    space = SearchSpace.preset("mnar")
    # not-MIWAE only: the holdout (observed cells) cannot reward MNAR corrections, so a
    # MAR comparator would win it for the wrong reason; for the same reason the holdout
    # does not choose the missing process (linear / nonlinear drifted where it cannot see).
    assert space.family_names == ("notmiwae",)
    # Self-masking with the directions the data calls fixed (a free direction can settle on
    # the wrong side, which the holdout cannot see), the others learned.
    assert space.families["notmiwae"]["missing_process"] == Fixed("selfmasking_known_signs")
    assert space.families["notmiwae"]["signs"] == Fixed("data")
    # The study's first trial replays not-MIWAE's defaults, with those signs.
    config = space.sample(optuna.trial.FixedTrial(warm_start_params(space)["notmiwae"]))
    defaults = NotMIWAE.default_params()
    for key in ("hidden_dims", "latent_dim", "likelihood", "activation", "n_samples"):
        assert config.model_params[key] == defaults[key], key
    assert config.model_params["missing_process"] == "selfmasking_known_signs"
    assert config.model_params["signs"] == "data"
    # The preset survives its JSON round trip (a string where signs are usually a list).
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert config.train_params["lr"] == TrainConfig().lr and config.train_params["epochs"] == TrainConfig().epochs


def test_cissvae_preset_keeps_the_package_space():
    space = SearchSpace.preset("cissvae")
    fam = space.families["cissvae"]
    assert fam["num_hidden_layers"] == Int(1, 4)
    assert fam["hidden_dim"] == Categorical((64, 512))
    assert fam["latent_dim"] == Categorical((10, 100))
    assert fam["num_shared_encode"] == Categorical((0, 1, 3))
    assert fam["beta"] == Fixed(0.01)
    assert set(fam["encoder_shared_placement"].choices) == {"at_start", "at_end", "alternating", "random"}
    assert space.train["patience"] == Fixed(2)
    assert space.train["reset_lr_refit"] == Categorical((True, False))
    assert space.train["lr"].low == 1e-4 and space.train["lr"].high == 1e-3


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize("name", PRESETS)
def test_tpe_sampling_gives_valid_configs(name):
    space = SearchSpace.preset(name)
    study, configs = _run(space, 10)
    assert len({c.model for c in configs}) >= min(2, len(space.family_names))
    for trial, cfg in zip(study.trials, configs):
        _check_valid(space, cfg, trial.params)
        if len(space.family_names) > 1:
            assert list(trial.params)[0] == "model"
            assert all(k == "model" or "." not in k or k.startswith(cfg.model + ".") for k in trial.params)


def test_same_sampler_seed_same_configs():
    space = SearchSpace.preset("default")
    _, first = _run(space, 8, seed=3)
    _, second = _run(space, 8, seed=3)
    _, other = _run(space, 8, seed=4)
    assert first == second
    assert first != other


def test_fixed_trial_rebuilds_the_sampled_config():
    space = SearchSpace.preset("cissvae")
    study, configs = _run(space, 6)
    for trial, cfg in zip(study.trials, configs):
        assert space.sample(optuna.trial.FixedTrial(trial.params, number=trial.number)) == cfg


def _random_study_configs(space: SearchSpace, n: int) -> list[tuple[optuna.trial.FrozenTrial, TrialConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        cfg = space.sample(trial)
        study.tell(trial, 0.0)
        out.append((study.trials[-1], cfg))
    return out


def test_random_placement_is_seeded_by_trial_number():
    space = SearchSpace(
        {"cissvae": {"num_hidden_layers": 4, "num_shared_encode": 2, "num_shared_decode": 2,
                     "encoder_shared_placement": "random", "decoder_shared_placement": "random"}},
        train={},
    )
    pairs = _random_study_configs(space, 12)
    for trial, cfg in pairs:
        assert cfg.model_params["layer_order_enc"] == layer_order(4, 2, "random", 2 * trial.number)
        assert cfg.model_params["layer_order_dec"] == layer_order(4, 2, "random", 2 * trial.number + 1)
        # The number alone reproduces the order when the trial is rebuilt from its parameters.
        assert space.sample(optuna.trial.FixedTrial(trial.params, number=trial.number)) == cfg
    assert len({tuple(cfg.model_params["layer_order_enc"]) for _, cfg in pairs}) > 1


def test_placements_and_counts_become_family_layer_orders():
    space = SearchSpace({"cissvae": {"num_hidden_layers": Int(1, 4)}}, train={})
    pairs = _random_study_configs(space, 30)
    clamped = 0
    for trial, cfg in pairs:
        p = trial.params
        depth = p["cissvae.num_hidden_layers"]
        for k, (side, n_key, p_key) in enumerate(
            [("enc", "num_shared_encode", "encoder_shared_placement"),
             ("dec", "num_shared_decode", "decoder_shared_placement")]
        ):
            n_shared = min(p[f"cissvae.{n_key}"], depth)  # more shared layers than layers: all shared
            clamped += p[f"cissvae.{n_key}"] > depth
            expected = layer_order(depth, n_shared, p[f"cissvae.{p_key}"], 2 * trial.number + k)
            assert cfg.model_params[f"layer_order_{side}"] == expected
        _build(cfg)
    assert clamped > 0


def test_per_layer_widths_are_conditional_on_depth():
    space = SearchSpace(
        {"vae": {"num_hidden_layers": Int(1, 3), "hidden_dim": Int(8, 64, step=8),
                 "hidden_dim_2": Categorical((5, 7))}},
        train={},
    )
    study, configs = _run(space, 12)
    depths = set()
    for trial, cfg in zip(study.trials, configs):
        depth = trial.params["vae.num_hidden_layers"]
        depths.add(depth)
        dims = cfg.model_params["hidden_dims"]
        assert dims == [trial.params[f"vae.hidden_dim_{i}"] for i in range(depth)]
        assert sorted(k for k in trial.params if "hidden_dim_" in k) == [f"vae.hidden_dim_{i}" for i in range(depth)]
        if depth == 3:
            assert dims[2] in (5, 7)
    assert len(depths) >= 2


def test_constant_layer_size_samples_one_width():
    space = SearchSpace(
        {"vae": {"num_hidden_layers": Int(1, 4), "hidden_dim": Categorical((16, 32, 64))}},
        train={}, constant_layer_size=True,
    )
    study, configs = _run(space, 8)
    for trial, cfg in zip(study.trials, configs):
        dims = cfg.model_params["hidden_dims"]
        assert dims == [trial.params["vae.hidden_dim"]] * trial.params["vae.num_hidden_layers"]
        assert not any("hidden_dim_" in k for k in trial.params)


def test_evaluate_all_orders_samples_every_order():
    fam = {"num_hidden_layers": 3, "hidden_dim": 8, "num_shared_encode": 1, "num_shared_decode": 0}
    space = SearchSpace({"cissvae": fam}, train={}, evaluate_all_orders=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    shared = layer_order(1, 1, "at_start", 0)[0]
    for _ in range(30):
        trial = study.ask()
        cfg = space.sample(trial)
        study.tell(trial, 0.0)
        code = trial.params["cissvae.layer_order_enc_L3_S1"]
        seen.add(code)
        assert ["S" if t == shared else "U" for t in cfg.model_params["layer_order_enc"]] == list(code)
        assert cfg.model_params["layer_order_dec"] == layer_order(3, 0, "at_end", 0)
    assert seen == {"SUU", "USU", "UUS"}
    dist = study.trials[0].distributions["cissvae.layer_order_enc_L3_S1"]
    assert list(dist.choices) == ["SUU", "USU", "UUS"]


def test_max_exhaustive_orders_caps_the_choice():
    fam = {"num_hidden_layers": 4, "hidden_dim": 8, "num_shared_encode": 2, "num_shared_decode": 0}
    space = SearchSpace({"cissvae": fam}, train={}, evaluate_all_orders=True, max_exhaustive_orders=3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    space.sample(trial)
    # 6 orders of 2 shared among 4 layers; 3 evenly spaced ones are kept, both extremes included.
    assert list(trial.distributions["cissvae.layer_order_enc_L4_S2"].choices) == ["SSUU", "SUUS", "UUSS"]


def test_conditional_training_and_clustering_options():
    space = SearchSpace(
        ["vae"],
        train={"reset_lr_refit": [True, False], "lr_refit": Float(1e-4, 1e-2, log=True)},
        clustering={"n_clusters": [None, 3], "leiden_resolution": (0.1, 1.0), "k_neighbors": (5, 30)},
    )
    study, configs = _run(space, 16)
    for trial, cfg in zip(study.trials, configs):
        assert ("lr_refit" in trial.params) == cfg.train_params["reset_lr_refit"]
        leiden = cfg.clustering_params["n_clusters"] is None
        assert ("leiden_resolution" in trial.params) == leiden
        assert ("k_neighbors" in cfg.clustering_params) == leiden
        configs_from_dict(dict(cfg.train_params))
    assert {c.train_params["reset_lr_refit"] for c in configs} == {True, False}


# ------------------------------------------------------------------ construction
def test_shorthand_is_stored_typed_and_round_trips():
    space = SearchSpace(
        {"vae": {"latent_dim": (2, 16), "num_hidden_layers": (1, 3), "hidden_dim": [32, 64], "beta": (0.1, 1.0)}},
        train={"lr": (1e-4, 1e-2), "batch_size": [64, 128], "epochs": 30},
        clustering={"n_clusters": [None, 2, 4]},
    )
    fam = space.families["vae"]
    assert fam["latent_dim"] == Int(2, 16)
    assert fam["hidden_dim"] == Categorical((32, 64))
    assert fam["beta"] == Float(0.1, 1.0)
    assert space.train["lr"] == Float(1e-4, 1e-2)
    assert space.train["batch_size"] == Categorical((64, 128))
    assert space.train["epochs"] == Fixed(30)
    assert space.clustering["n_clusters"] == Categorical((None, 2, 4))
    assert all(isinstance(p, (Float, Int, Categorical, Fixed)) for p in fam.values())
    assert SearchSpace.from_json(space.to_json()) == space
    assert json.loads(space.to_json())["families"]["vae"]["latent_dim"] == {
        "type": "int", "low": 2, "high": 16, "step": 1, "log": False
    }


def test_list_valued_parameter_list_is_its_fixed_value():
    space = SearchSpace({"vae": {"hidden_dims": [32, 32]}}, train={})
    assert space.families["vae"]["hidden_dims"] == Fixed([32, 32])
    assert "num_hidden_layers" not in space.families["vae"]  # the user's choice replaces the family's meta keys
    assert space.fixed_config().model_params["hidden_dims"] == [32, 32]


def test_family_name_only_uses_the_family_space():
    space = SearchSpace(["vae"])
    own = get_model_class("vae").search_space()
    assert set(own) <= set(space.families["vae"])
    assert space.model_param == Fixed("vae")
    assert SearchSpace(None).family_names == tuple(available_models())


def test_override_extends_the_family_space():
    space = SearchSpace({"vae": {"latent_dim": Fixed(3)}}, train={})
    own = get_model_class("vae").search_space()
    assert space.families["vae"]["latent_dim"] == Fixed(3)
    assert set(space.families["vae"]) == set(own) | {"latent_dim"}


def test_equality_distinguishes_int_from_float():
    a = SearchSpace(["vae"], clustering={"leiden_resolution": 1})
    b = SearchSpace(["vae"], clustering={"leiden_resolution": 1.0})
    assert a != b
    assert a == SearchSpace(["vae"], clustering={"leiden_resolution": 1})
    assert hash(a) == hash(SearchSpace(["vae"], clustering={"leiden_resolution": 1}))


def test_hand_written_json_with_shorthand_loads(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"families": {"vae": {"latent_dim": [4, 8]}}, "train": {"epochs": 5}}))
    space = SearchSpace.from_file(path)
    assert space.families["vae"]["latent_dim"] == Categorical((4, 8))
    assert space.train == {"epochs": Fixed(5)}


# ------------------------------------------------------------------ fixed_config and TrialConfig
def test_fixed_config_uses_fixed_defaults_and_midpoints():
    space = SearchSpace(
        {"vae": {"latent_dim": Int(2, 10), "num_hidden_layers": Int(1, 3), "hidden_dim": Categorical((7, 9))},
         "miwae": {}},
        train={"epochs": Fixed(12), "lr": Float(1e-4, 1e-2, log=True), "batch_size": Categorical((32, 256)),
               "decay_factor": Float(0.5, 0.9)},
        clustering={"n_clusters": Int(2, 6)},
    )
    cfg = space.fixed_config("vae")
    defaults = get_model_class("vae").default_params()
    assert cfg.model == "vae"
    assert cfg.train_params["epochs"] == 12  # Fixed value
    assert cfg.train_params["lr"] == 1e-3  # TrainConfig default lies inside the range
    assert cfg.train_params["batch_size"] == 256  # default is one of the choices
    assert cfg.train_params["decay_factor"] == pytest.approx(0.7)  # default 0.999 outside: midpoint
    assert cfg.clustering_params == {"n_clusters": 4}
    assert "max_loops" not in cfg.train_params  # not in the space: config default applies
    expected_latent = defaults["latent_dim"] if 2 <= defaults["latent_dim"] <= 10 else 6
    assert cfg.model_params["latent_dim"] == expected_latent
    assert cfg.model_params["hidden_dims"] == [7] * len(cfg.model_params["hidden_dims"])
    get_model_class("vae").resolve_params(cfg.model_params)
    assert space.fixed_config().model == "miwae"  # first name in sorted order
    assert math.isclose(
        SearchSpace(["vae"], train={"lr": Float(1e-5, 1e-4, log=True)}).fixed_config().train_params["lr"],
        math.sqrt(1e-5 * 1e-4),
    )


@pytest.mark.parametrize("name", PRESETS)
def test_fixed_config_of_every_preset_is_buildable(name):
    space = SearchSpace.preset(name)
    for model in space.family_names:
        cfg = space.fixed_config(model)
        assert cfg.model == model
        _build(cfg)
        configs_from_dict(dict(cfg.train_params))
        assert space.fixed_config(model) == cfg  # no randomness without a trial


def test_trial_config_round_trip_and_copies():
    params = {"hidden_dims": [8, 8], "latent_dim": 3}
    cfg = TrialConfig("vae", params, {"lr": 1e-3}, {"n_clusters": None})
    params["hidden_dims"].append(99)
    assert cfg.model_params["hidden_dims"] == [8, 8]
    assert TrialConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    out = cfg.to_dict()
    out["model_params"]["latent_dim"] = 5
    assert cfg.model_params["latent_dim"] == 3
    assert cfg.train_configs()[0].lr == 1e-3


# ------------------------------------------------------------------ errors
def test_unknown_family_lists_available_models():
    with pytest.raises(ValueError, match=r"Unknown model family 'gan'; available models are \["):
        SearchSpace(["vae", "gan"])


def test_unknown_family_param_lists_valid_names():
    with pytest.raises(ValueError, match=r"\['latent_size'\] for model 'vae'; valid names are .*'latent_dim'"):
        SearchSpace({"vae": {"latent_size": 4}})


def test_meta_keys_only_where_they_apply():
    # The plain VAE has no cluster-specific layers, so shared-layer meta keys mean nothing to it.
    assert "layer_order_enc" not in get_model_class("vae").default_params()
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['num_shared_encode'\] for model 'vae'"):
        SearchSpace({"vae": {"num_shared_encode": 1}})


def test_bad_shorthand():
    with pytest.raises(ValueError, match=r"latent_dim.*a tuple means a range"):
        SearchSpace({"vae": {"latent_dim": (1, 2, 3, 4)}})
    with pytest.raises(ValueError, match=r"needs a 'type' key"):
        SearchSpace({"vae": {"latent_dim": {"low": 1, "high": 4}}})
    with pytest.raises(ValueError, match=r"low <= high"):
        SearchSpace(train={"lr": (1e-2, 1e-4)})


def test_unknown_train_and_clustering_names():
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['learning_rate'\]; valid names are .*'lr'"):
        SearchSpace(["vae"], train={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"clustering: unknown option\(s\) \['k'\]; valid names are .*'n_clusters'"):
        SearchSpace(["vae"], clustering={"k": 3})


def test_bad_train_and_clustering_values():
    with pytest.raises(ValueError, match=r"train\['batch_size'\]: value 0 .*batch_size must be >= 1"):
        SearchSpace(["vae"], train={"batch_size": [0, 64]})
    with pytest.raises(TypeError, match=r"train\['epochs'\]: value 'many'"):
        SearchSpace(["vae"], train={"epochs": "many"})
    with pytest.raises(ValueError, match=r"lr_refit.*reset_lr_refit"):
        SearchSpace(["vae"], train={"lr_refit": 1e-3})
    with pytest.raises(ValueError, match=r"clustering\['n_clusters'\]: value 0"):
        SearchSpace(["vae"], clustering={"n_clusters": [0, 3]})


def test_conflicting_meta_keys():
    with pytest.raises(ValueError, match=r"'hidden_dims' conflicts with \['num_hidden_layers'\]"):
        SearchSpace({"vae": {"hidden_dims": [8], "num_hidden_layers": (1, 2)}})
    with pytest.raises(ValueError, match=r"'layer_order_enc' conflicts with \['num_shared_encode'\]"):
        SearchSpace({"cissvae": {"layer_order_enc": ["shared"], "num_shared_encode": 1}})
    with pytest.raises(ValueError, match=r"a fixed layer_order_enc cannot follow a tuned num_hidden_layers"):
        SearchSpace({"cissvae": {"layer_order_enc": layer_order(2, 1, "at_end", 0), "num_hidden_layers": (1, 3)}})
    with pytest.raises(ValueError, match=r"unknown placement 'middle'"):
        SearchSpace({"cissvae": {"encoder_shared_placement": ["at_end", "middle"]}})
    with pytest.raises(ValueError, match=r"hidden_dim_5.*can never be used.*at most 2"):
        SearchSpace({"vae": {"num_hidden_layers": (1, 2), "hidden_dim_5": 8}})
    with pytest.raises(ValueError, match=r"list-valued and can only be Fixed"):
        SearchSpace({"cissvae": {"hidden_dims": {"type": "categorical", "choices": [1, 2]}}})


def test_bad_options_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"max_exhaustive_orders must be >= 1, got 0"):
        SearchSpace(["vae"], max_exhaustive_orders=0)
    with pytest.raises(TypeError, match=r"families must be None, a list of family names"):
        SearchSpace("vae")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['familes'\]"):
        SearchSpace.from_dict({"familes": {}})
    with pytest.raises(ValueError, match=r"file version 99 is not supported"):
        SearchSpace.from_dict({**SearchSpace(["vae"]).to_dict(), "version": 99})
    with pytest.raises(ValueError, match=r"must end in \.json, \.yaml or \.yml"):
        SearchSpace.from_file(tmp_path / "space.txt")
    with pytest.raises(FileNotFoundError, match=r"no file at"):
        SearchSpace.from_file(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"not valid JSON"):
        SearchSpace.from_json("{")
    with pytest.raises(ValueError, match=r"model='gain' is not in this search space; choose one of \['vae'\]"):
        SearchSpace(["vae"]).fixed_config("gain")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['params'\]"):
        TrialConfig.from_dict({"model": "vae", "params": {}})
