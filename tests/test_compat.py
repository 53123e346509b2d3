"""ROSE 0.3 scripts run unchanged: its public names, configs, state access and custom loops.

Each test backs one entry of docs/compat.md, on a real radical.asyncflow engine.
"""

from __future__ import annotations

import inspect
import json

import pydantic
import pytest

import rose
from rose import metrics
from rose.al import AlgorithmSelector, ParallelActiveLearner, SequentialActiveLearner
from rose.events import state_from_body, state_to_body
from rose.learner import Learner, LearnerConfig, TaskConfig
from rose.metrics import MEAN_SQUARED_ERROR_MSE, MODEL_ACCURACY
from tests.test_learner import build

A, B, C = (TaskConfig(kwargs={"v": v}) for v in "ABC")


# ---------------------------------------------------------------- names


def test_import_rose_gives_the_learner_api_metrics_and_submodules():
    assert rose.Learner is Learner and rose.LearnerConfig is LearnerConfig
    constants = {k: v for k, v in vars(metrics).items() if k.isupper() and type(v) is str}
    assert len(constants) > 40 and all(getattr(rose, k) == v for k, v in constants.items())
    assert rose.MEAN_SQUARED_ERROR_MSE == "mean_squared_error_mse"
    assert rose.CUSTOM_UQ == metrics.CUSTOM_UQ == "custom_uq"
    lm = rose.LearningMetrics
    assert lm.is_supported_metric(MODEL_ACCURACY) and not lm.is_supported_metric("my_metric")
    assert lm.get_operator(MEAN_SQUARED_ERROR_MSE) == "<"
    assert lm.get_operator(lm.MODEL_ACCURACY) == ">=" and lm.MODEL_ACCURACY.value == MODEL_ACCURACY
    assert rose.learner.Metrics is lm and lm.OPERATORS.value[MODEL_ACCURACY] == ">="
    assert rose.al.AlgorithmSelector is rose.selector.AlgorithmSelector is AlgorithmSelector
    assert rose.active_learner.ParallelActiveLearner is ParallelActiveLearner
    for name in ("rl", "uq", "reinforcement_learner", "uq_learner", "uq_scorer"):
        assert getattr(rose, name).__name__.startswith("rose.")
    with pytest.raises(AttributeError):
        _ = rose.no_such_name


def test_equal_to_threshold_is_double_equals_and_single_is_accepted():
    assert rose.EQUAL_TO_THRESHOLD == "=="
    assert metrics.compare(1.0, 1.0, metrics.resolve_operator("m", "=="))
    assert metrics.compare(1.0, 1.0, metrics.resolve_operator("m", "="))


# ---------------------------------------------------------------- configs


def test_configs_are_keyword_only_pydantic_models():
    with pytest.raises(TypeError):
        TaskConfig((1,))  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        LearnerConfig(trainig=A)  # a misspelt task is an error, not ignored
    config = LearnerConfig(prediction=A, training={0: A, -1: B}, criterion={"default": C})
    assert config.get_task_config("prediction", 7) == A
    plain = config.model_dump()
    assert plain["training"] == {0: {"args": (), "kwargs": {"v": "A"}}, -1: B.model_dump()}
    assert LearnerConfig.model_validate(plain) == config
    # Through JSON the keys become strings; they read back as iterations.
    again = LearnerConfig.model_validate_json(config.model_dump_json())
    assert again.get_task_config("training", 0) == A and again.get_task_config("training", 5) == B
    assert json.loads(TaskConfig(args=(1, 2)).model_dump_json()) == {"args": [1, 2], "kwargs": {}}


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({0: A, -1: B}, [A, B, B, B, B]),
        ({0: A, 2: C}, [A, None, C, None, None]),
        ({1: B, "default": A}, [A, B, A, A, A]),
        (A, [A] * 5),
        (None, [None] * 5),
    ],
)
def test_schedule_is_exact_iteration_else_minus_one_or_default(schedule, expected):
    config = LearnerConfig(training=schedule)
    assert [config.get_task_config("training", i) for i in range(5)] == expected
    assert config.get_task_config("environment", 0) is None


def test_schedule_helpers(engine):
    learner = Learner(engine)
    sched = learner.create_iteration_schedule(
        "training", {0: {"args": (1,)}, -1: {"kwargs": {"lr": 0.1}}}
    )
    config = LearnerConfig(training=sched)
    assert config.get_task_config("training", 0) == TaskConfig(args=(1,))
    assert config.get_task_config("training", 9) == TaskConfig(kwargs={"lr": 0.1})
    adaptive = learner.create_adaptive_schedule("training", lambda i: {"kwargs": {"lr": 2.0**-i}})
    assert len(adaptive) == 100 and adaptive[3].kwargs == {"lr": 0.125}


# ---------------------------------------------------------------- IterationState


async def test_current_config_is_the_learner_config_in_effect(engine):
    learner = build(engine)
    first = LearnerConfig(training={0: TaskConfig(kwargs={"lr": 0.1}), -1: TaskConfig()})
    second = LearnerConfig(training=TaskConfig(kwargs={"lr": 0.5}))
    states = []
    async for state in learner.start(max_iter=4, initial_config=first):
        states.append(state)
        if state.iteration == 1:
            learner.set_next_config(second)
    assert [s.current_config for s in states] == [first, first, second, second]
    assert states[0].current_config.get_task_config("training", 0).kwargs == {"lr": 0.1}
    assert [s.lr for s in states] == [0.1, None, 0.5, 0.5]
    # Events hold it as plain data; read back, it answers the same questions.
    body = state_to_body(states[0])
    assert body["current_config"] == {"training": {"args": [], "kwargs": {"lr": 0.1}}}
    replayed = state_from_body(json.loads(json.dumps(body)))
    assert replayed.current_config.get_task_config("training", 0) == TaskConfig(kwargs={"lr": 0.1})
    assert state_to_body(replayed) == body
    # Whatever an event holds comes back out exactly, shaped like a config or not.
    odd = dict(body, current_config={"training": "not a map", "uncertainty": {"args": [1]}})
    assert state_to_body(state_from_body(odd)) == odd
    # Without a config there is none.
    plain = [s async for s in build(engine).start(max_iter=1)]
    assert plain[0].current_config is None and state_to_body(plain[0])["current_config"] == {}
    assert state_from_body(state_to_body(plain[0])).current_config is None


async def test_missing_state_key_is_none_and_to_dict_is_flat(engine):
    states = [s async for s in build(engine).start(max_iter=1)]
    s = states[0]
    assert s.mean_uncertainty is None and s.picked == 5
    if s.mean_uncertainty and s.mean_uncertainty < 0.15:  # ROSE's documented pattern
        pytest.fail("None must not pass the guard")
    d = s.to_dict()
    assert d["picked"] == 5 and d["n_labeled"] == 10 and d["iteration"] == 0
    assert d["metric_value"] == 0.5 and d["learner_id"] is None
    assert "state" not in d and "current_config" not in d


async def test_current_state_and_max_iterations(engine):
    learner = build(engine)
    assert learner.get_current_state() is None and learner.get_max_iterations() is None
    states = [s async for s in learner.start(max_iter=3)]
    assert learner.get_current_state() is states[-1] and learner.get_max_iterations() == 3
    assert learner.get_metric_results() == {0: 0.5, 1: 0.25, 2: 0.125}
    assert learner.metric_values_per_iteration is learner.get_metric_results()


# ---------------------------------------------------------------- custom loops


async def test_base_learner_custom_loop(engine):
    learner = Learner(engine)
    assert learner.register_and_submit is True

    @learner.simulation_task(as_executable=False)
    async def simulation(n=2):
        return {"x": list(range(n))}

    @learner.training_task(as_executable=False)
    async def training(sim, scale=1.0):
        return {"loss": len(sim["x"]) * scale}

    @learner.active_learn_task(as_executable=False)
    async def active_learn(train):
        return {"picked": 1}

    @learner.prediction_task(as_executable=False)
    async def prediction(train):
        return {"pred": 0}

    losses = iter([0.5, 0.05])

    @learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.1, as_executable=False)
    async def check(*_):
        return next(losses)

    assert learner.simulation_function["func"].__name__ == "simulation"
    assert learner.criterion_function["threshold"] == 0.1
    sim = simulation(n=3)  # calling a decorated task submits it
    train = training(sim, scale=2.0)  # a future as argument: a dependency
    assert await train == {"loss": 6.0}
    assert await active_learn(train) == {"picked": 1} and await prediction(train) == {"pred": 0}
    assert await check() == (False, 0.5)  # awaiting the criterion: (should_stop, value)
    learner.register_state("note", "x")
    state = learner.build_iteration_state(0, metric_value=0.5, current_config=LearnerConfig())
    assert state.note == "x" and state.metric_name == MEAN_SQUARED_ERROR_MSE
    assert state.metric_history == [0.5] and state.current_config == LearnerConfig()
    assert await check() == (True, 0.05)
    assert learner.get_metric_results() == {0: 0.5, 1: 0.05} and learner.iteration == 2
    assert learner.compare_metric(MEAN_SQUARED_ERROR_MSE, 0.05, 0.1)
    with pytest.raises(ValueError, match="needs an operator"):
        learner.compare_metric("my_metric", 1.0, 0.5)
    with pytest.raises(NotImplementedError):
        learner.start()


async def test_register_and_submit_false_runs_tasks_here(engine):
    learner = Learner(engine, register_and_submit=False)

    @learner.training_task
    def training(x):
        return x * 2

    assert training(21) == 42
    decorate = learner.register_decorator("simulation")

    @decorate(as_executable=False, log_params={"n": 1})
    def simulation():
        return "here"

    assert simulation() == "here" and learner.build_manifest().tasks["simulation"].log_params


async def test_state_registry_and_callbacks(engine):
    learner = build(engine)
    seen: list[tuple[str, object]] = []
    learner.on_state_update(lambda k, v: seen.append((k, v)))
    learner.on_state_update(lambda k, v: 1 / 0)  # a failing callback stops nothing
    learner.register_state("budget", 3)
    assert learner.get_state("budget") == 3 and learner.get_state("nope", 7) == 7
    assert learner.get_all_state() == {"budget": 3}
    states = [s async for s in learner.start(max_iter=1)]
    # task results go through the registry: callbacks see them, the state carries them
    assert ("picked", 5) in seen and learner.get_state("picked") == 5
    assert states[0].picked == 5
    callback = seen.append
    learner.on_state_update(callback)
    learner.remove_state_callback(callback)
    learner.clear_state()
    assert learner.get_all_state() == {}


async def test_shutdown_passes_arguments_through(tmp_path):
    from rose.execution import engine

    async with engine(work_dir=tmp_path) as eng:
        learner = Learner(eng)
        await learner.shutdown(skip_execution_backend=False)
        assert eng._shutdown_event.is_set()


# ---------------------------------------------------------------- signatures


async def test_parallel_start_takes_skip_simulation_step_fourth(engine):
    learner = build(engine, ParallelActiveLearner, criterion=False)
    configs = [LearnerConfig(training=TaskConfig(kwargs={"lr": i})) for i in (1, 2)]
    states = [s async for s in learner.start(2, 2, False, True, configs)]
    assert learner.calls["sim"] == 0  # skip_simulation_step, positionally
    assert sorted((s.learner_id, s.lr) for s in states) == [(0, 1), (0, 1), (1, 2), (1, 2)]
    with pytest.warns(DeprecationWarning):
        finals = await build(engine, ParallelActiveLearner, criterion=False).teach(
            2, 1, False, True, configs
        )
    assert [f.lr for f in finals] == [1, 2]


def test_sequential_learner_has_rose_03_members(engine):
    learner = SequentialActiveLearner(engine, run_name="kept")  # this project's addition
    for name in (
        "simulation_task", "training_task", "active_learn_task", "prediction_task",
        "utility_task", "as_stop_criterion", "register_state", "get_state", "get_all_state",
        "clear_state", "on_state_update", "remove_state_callback", "build_iteration_state",
        "compare_metric", "get_metric_results", "create_iteration_schedule",
        "create_adaptive_schedule", "register_decorator", "get_current_state",
        "get_max_iterations", "shutdown", "stop", "set_next_config", "add_tracker",
    ):  # fmt: skip
        assert callable(getattr(learner, name)), name
    assert learner.run_id.startswith("kept-")


ROSE_03_WRAPPERS = {
    ("SequentialActiveLearner", "teach"): [
        "max_iter", "skip_pre_loop", "skip_simulation_step", "learner_config",
    ],
    ("ParallelActiveLearner", "teach"): [
        "parallel_learners", "max_iter", "skip_pre_loop", "skip_simulation_step",
        "learner_configs",
    ],
    ("SequentialReinforcementLearner", "learn"): [
        "max_iter", "skip_pre_loop", "skip_simulation_step", "learner_config",
    ],
    ("ParallelReinforcementLearner", "learn"): [
        "parallel_learners", "max_iter", "skip_pre_loop", "learner_configs",
    ],
    ("ParallelExperience", "learn"): ["max_iter", "skip_pre_loop", "learner_config"],
    ("SeqUQLearner", "teach"): [
        "model_names", "num_predictions", "max_iter", "skip_pre_loop", "learning_config",
    ],
    ("ParallelUQLearner", "teach"): [
        "learner_names", "model_names", "num_predictions", "max_iter", "skip_pre_loop",
        "learner_configs",
    ],
}  # fmt: skip


@pytest.mark.parametrize(("cls", "method"), sorted(ROSE_03_WRAPPERS))
def test_deprecated_wrappers_take_rose_03_arguments(cls, method):
    learner_cls = getattr(rose.al, cls, None) or getattr(rose.rl, cls, None)
    learner_cls = learner_cls or getattr(rose.uq, cls)
    params = inspect.signature(getattr(learner_cls, method)).parameters.values()
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
    assert positional == ROSE_03_WRAPPERS[cls, method]
    assert inspect.iscoroutinefunction(getattr(learner_cls, method))


async def test_deprecated_wrapper_hands_rose_03_keywords_to_start(engine):
    learner = build(engine, criterion=False)
    config = LearnerConfig(training=TaskConfig(kwargs={"lr": 0.5}))
    with pytest.warns(DeprecationWarning, match=r"teach\(\) is deprecated"):
        final = await learner.teach(max_iter=2, learner_config=config)
    assert final.iteration == 1 and final.current_config is config
    assert final.state["lr"] == 0.5


# ---------------------------------------------------------------- where this project differs


def test_explicit_operator_wins_over_the_metrics_own(engine):
    learner = Learner(engine)
    # ROSE 0.3 ignores operator= for a known metric; here what you write is what runs.
    assert learner.compare_metric(MEAN_SQUARED_ERROR_MSE, 0.5, 0.1, operator=">")
    assert not learner.compare_metric(MEAN_SQUARED_ERROR_MSE, 0.5, 0.1)


async def test_bool_criterion_is_an_error(engine, recorder):
    learner = build(engine, criterion=False)

    @learner.as_stop_criterion(MODEL_ACCURACY, threshold=0.9, as_executable=False)
    async def check(*a, **k):
        return True

    learner.add_tracker(recorder)
    with pytest.raises(TypeError, match="must produce a number"):
        async for _ in learner.start(max_iter=3):
            pass
    assert recorder.stop_reason == "error"


async def test_parallel_stop_set_next_config_per_learner_and_no_prints(engine, recorder, capsys):
    learner = build(engine, ParallelActiveLearner)
    learner.add_tracker(recorder)
    seen = []
    async for state in learner.start(parallel_learners=2, max_iter=10):
        seen.append((state.learner_id, state.iteration, state.lr))
        if state.learner_id == 1 and state.iteration == 0:
            learner.set_next_config(LearnerConfig(training=TaskConfig(kwargs={"lr": 9})), 1)
        if len(seen) == 5:
            learner.stop()
    assert len(seen) <= 6 and recorder.stop_reason == "stopped"
    assert recorder.calls[-1][2]["final_state"] is not None  # the real last state
    assert {lr for lid, it, lr in seen if lid == 0} == {None}
    assert 9 in {lr for lid, it, lr in seen if lid == 1 and it >= 1}
    assert learner.metric_values_per_iteration == {}  # per learner: state.metric_history
    assert capsys.readouterr().out == ""  # progress goes to logging, not stdout


def test_selector_active_learn_task_bare_and_named(engine):
    sel = AlgorithmSelector(engine)
    assert sel.register_and_submit is False

    @sel.active_learn_task
    def uncertainty(*a):
        return "picked"

    @sel.active_learn_task(name="random")
    def other(*a):
        return "other"

    assert sel.algorithm_names == ["uncertainty", "random"] and uncertainty() == "picked"
