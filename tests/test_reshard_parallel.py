"""A TP=2 x PP=2 sharded checkpoint loaded into the parallel model (4 real processes, DeepSpeed's pipeline
engine) gives the loss of load_model on the Hugging Face source (fp32, relative error <= 1e-5)."""
import pytest
import torch

from statex_dist import load_model
from statex_dist.reshard import run
from tests.dist_utils import run_workers
from tests.test_reshard import make_source


def _pipeline_loss(rank, world, ckpt, ids, labels):
    import deepspeed
    from megatron.core import parallel_state as ps

    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    from statex_dist.models import pipeline as pipe
    from statex_dist.models.names import by_internal_name
    from statex_dist.parallel import state
    sharded = ShardedCheckpoint(ckpt)
    state.initialize(2, 2)
    module = pipe.pipeline_module(sharded.config, torch.float32, 2, 2)
    sharded.load_into(by_internal_name(module), state.tp_rank(), 2)
    engine, *_ = deepspeed.initialize(model=module, config={
        "train_batch_size": ids.shape[0], "train_micro_batch_size_per_gpu": ids.shape[0],
        "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9})
    loss = engine.eval_batch(iter([(ids, labels)]))
    stage = ps.get_pipeline_model_parallel_rank()
    state.destroy()
    return float(loss), stage


@pytest.mark.parametrize("kind", ["gla", "mamba_ssm"])
def test_tp2_pp2_checkpoint_in_the_parallel_model(tmp_path, kind):
    src = make_source(kind, tmp_path / "src")
    run(["--src", str(src), "--dst", str(tmp_path / "tp2pp2"), "--tp", "2", "--pp", "2"])
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 101, (2, 23), generator=g)
    labels = torch.randint(0, 101, (2, 23), generator=g)
    with torch.no_grad():
        want = load_model(src)(ids, labels=labels).item()
    results = run_workers(_pipeline_loss, 4, str(tmp_path / "tp2pp2"), ids, labels, tmp_path=tmp_path / "w",
                          timeout=300)
    assert {s for _, s in results} == {0, 1}
    for loss, _ in results:  # the engine hands the last stage's loss to every stage
        assert abs(loss - want) <= 1e-5 * abs(want)
