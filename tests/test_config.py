import pytest

from bertfit.config import Config, build_config, parse_set_overrides
from bertfit.errors import BertfitError


def test_defaults_are_the_documented_recipe():
    cfg = Config()
    assert (cfg.model, cfg.lr, cfg.batch_size, cfg.seed, cfg.scheduler) == ("bert-base-uncased", 5e-5, 16, 42, "linear")
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert cfg.eval_every == "epoch" and cfg.padding == "bucket"


def test_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: bert-base-uncased\nlr: 2.0e-5\nepochs: 3\nbatch_size: 16\neval_every: 750\n")
    overrides = {"epochs": None, **parse_set_overrides(["model=minilm", "epochs=1", "eval_every=epoch"])}
    cfg = build_config(str(recipe), overrides)
    assert cfg.model == "minilm" and cfg.epochs == 1 and cfg.lr == 2e-5 and cfg.eval_every == "epoch"
    assert build_config(str(recipe)).eval_every == 750


def test_set_values_are_typed_as_yaml():
    assert parse_set_overrides(["lr=3e-5", "batch_size=8", "text_columns=[a, b]", "keep_best=false"]) == {
        "lr": 3e-5,
        "batch_size": 8,
        "text_columns": ["a", "b"],
        "keep_best": False,
    }


def test_hf_trainer_names_are_accepted(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "learning_rate: 1.0e-5\nper_device_train_batch_size: 8\nnum_train_epochs: 2\n"
        "lr_scheduler_type: cosine\nmax_grad_norm: 0.5\ngradient_accumulation_steps: 4\n"
    )
    cfg = build_config(str(recipe))
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.scheduler, cfg.clip_norm, cfg.grad_accum) == (
        1e-5,
        8,
        2,
        "cosine",
        0.5,
        4,
    )


def test_saved_recipe_round_trips(tmp_path):
    cfg = build_config(None, {"model": "minilm", "data": "sst2", "eval_every": 10, "text_columns": "a,b"})
    again = build_config(None, __import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg and again.text_columns == ["a", "b"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": -1}, "invalid value for 'lr': Input should be greater than 0 (got -1)"),
        ({"batch_size": 0}, "invalid value for 'batch_size': Input should be greater than 0 (got 0)"),
        (
            {"scheduler": "exponential"},
            "invalid value for 'scheduler': Input should be 'linear', 'constant' or 'cosine' (got 'exponential')",
        ),
        ({"eval_every": 0}, "invalid value for 'eval_every'"),
        ({"learning_rat": 1e-5}, "unknown recipe key 'learning_rat'; did you mean 'lr'?"),
        ({"warmup_ration": 0.1}, "unknown recipe key 'warmup_ration'; did you mean 'warmup_ratio'?"),
        ({"text_columns": ["a", "b", "c"]}, "text_columns takes one column, or two for text pairs"),
    ],
)
def test_bad_values_are_one_clear_line(overrides, message):
    with pytest.raises(BertfitError) as err:
        build_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(BertfitError, match="recipe file 'missing.yaml' not found"):
        build_config("missing.yaml")
    broken = tmp_path / "b.yaml"
    broken.write_text("lr: [1\n")
    with pytest.raises(BertfitError, match="is not valid YAML"):
        build_config(str(broken))
    listed = tmp_path / "l.yaml"
    listed.write_text("- lr\n")
    with pytest.raises(BertfitError, match="must be a mapping"):
        build_config(str(listed))


def test_train_options_are_generated_from_every_config_field():
    from typer.main import get_command

    from bertfit import cli

    options = {p.name: p for p in get_command(cli.app).commands["train"].params}
    for name, field in Config.model_fields.items():
        if name in cli.NOT_OPTIONS:
            assert name not in options
            continue
        assert options[name].help == field.description.partition(" [default: ")[0], name


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--label-names", "neg,pos"], {"label_names": ["neg", "pos"]}),
        (["--text-column", "premise", "--text-column", "hypothesis"], {"text_columns": ["premise", "hypothesis"]}),
        (
            ["--eval-every", "5", "--no-keep-best", "--scheduler", "cosine"],
            {"eval_every": 5, "keep_best": False, "scheduler": "cosine"},
        ),
        (["--lr", "3e-5", "--set", "lr=1e-4"], {"lr": 1e-4}),  # --set wins over an option
    ],
)
def test_generated_options_reach_the_config(args, expected, monkeypatch):
    from bertfit import cli

    built = {}

    def keep(recipe, overrides):
        built["cfg"] = build_config(recipe, overrides)
        raise cli.typer.Exit(0)

    monkeypatch.setattr(cli, "build_config", keep)
    cli.app(["train", "--data", "x", *args], standalone_mode=False)
    assert {k: getattr(built["cfg"], k) for k in expected} == expected


def test_every_recipe_field_says_its_group_and_whether_it_changes_results():
    """Whether resuming with a field changed is refused is decided on the field itself: a new field that says
    neither fails here, rather than silently resuming across a change."""
    from bertfit.config import RESULT_FIELDS, Config

    groups = {"data", "optimisation", "evaluation", "speed", "tracking", "reliability", "scale-out"}
    for name, field in Config.model_fields.items():
        extra = field.json_schema_extra or {}
        assert extra.get("group") in groups, f"{name} has no group"
        assert isinstance(extra.get("changes_results"), bool), f"{name} does not say whether it changes results"
    assert {"lr", "batch_size", "seed", "data", "model", "max_length", "world_size"} <= set(RESULT_FIELDS)
    assert not {"output", "report_to", "keep_checkpoints", "device", "log_every"} & set(RESULT_FIELDS)


def sample_facts(dataset: str):
    """What `resolve` reads of a machine, a model and data: 150 SST-2 sentences on a CPU, named `dataset`."""
    import pandas as pd
    from conftest import SAMPLES

    from bertfit.data.schema import DataSpec
    from bertfit.engine.setup import Facts

    return Facts(
        precision="fp32",
        device="cpu",
        world_size=1,
        spec=DataSpec("classification", ["sentence"], "label", ["negative", "positive"]),
        dataset=dataset,
        splits=("train", "validation", None),
        model_max=512,
        train=pd.read_csv(SAMPLES / "sst2_200.csv").head(150),
    )


def test_one_resolve_leaves_no_auto_in_the_recipe():
    """`resolve` fills in every auto field from what was measured (device, data, model) in one place: the recipe a
    run records is the one it used."""
    from bertfit.engine.setup import resolve

    facts = sample_facts("glue/cola")
    auto = Config(data="sst2", output="run", class_weights="balanced", batch_size=400, epochs=2)
    cfg, notes = resolve(auto, facts)
    left = {k for k, v in cfg.model_dump().items() if v is None or v == "auto"}
    # Nothing auto is left but where the user's choice stands (device), or another library decides.
    assert left == {
        "device",
        "lora_targets",
        "mlflow_tracking_uri",
        "max_train_samples",
        "max_eval_samples",
        "max_test_samples",
        "max_steps",
        "early_stopping",
        "label_columns",
        "checkpoint_every",
        "test_split",
        "setfit_pairs",  # SetFit's own count for the data (capped), counted as the pairs are drawn
        "corrections",  # none: no review applied
    }, left
    assert (cfg.task, cfg.text_columns, cfg.label_column) == ("classification", ["sentence"], "label")
    assert (cfg.precision, cfg.compile, cfg.max_length, cfg.metric_for_best) == ("fp32", False, 512, "matthews")
    assert cfg.metrics == ["matthews"]  # CoLA is scored, and its best checkpoint chosen, by Matthews' correlation
    assert cfg.batch_size == 150 and notes == [
        "method auto: finetune, not setfit (for 150 examples), because the recipe sets epochs, batch_size, "
        "class_weights, which only fine-tuning uses",
        "batch_size 400 is larger than the 150 training examples: each step takes all of them (batch_size 150)",
    ]
    assert cfg.method == "finetune"
    assert cfg.eval_batch_size == 300 and cfg.log_every == 1  # 2 steps: a line per step
    assert len(cfg.class_weights) == 2 and all(isinstance(w, float) for w in cfg.class_weights)
    again, _ = resolve(cfg, facts)
    assert again == cfg  # resolving a resolved recipe changes nothing


def test_fine_tuning_on_little_data_takes_enough_steps_unless_the_recipe_chose():
    """150 examples are 30 steps in 3 epochs: fine-tuning takes 400 with warmup, scored 8 times, and says so; a
    recipe that sets epochs (or max_steps, or warmup) keeps its choice."""
    from bertfit.engine.setup import resolve

    facts = sample_facts("sst2")
    cfg, notes = resolve(Config(data="sst2", output="run", method="finetune"), facts)
    assert (cfg.max_steps, cfg.warmup_ratio, cfg.eval_every) == (400, 0.1, 50)
    assert notes == [
        "150 training examples give 30 steps in 3 epochs, too few to fine-tune from a fresh head: training 400 steps "
        "(40.0 epochs) with 10% warmup, scored every 50 steps (Mosbach et al. 2021); set epochs or max_steps to choose"
    ]
    assert resolve(cfg, facts)[0] == cfg
    chosen, notes = resolve(Config(data="sst2", output="run", method="finetune", epochs=3), facts)
    assert (chosen.max_steps, chosen.warmup_ratio, chosen.eval_every, notes) == (None, 0.0, "epoch", [])
    warm, _ = resolve(Config(data="sst2", output="run", method="finetune", warmup_steps=5), facts)
    assert (warm.max_steps, warm.warmup_ratio, warm.warmup_steps) == (400, 0.0, 5)
