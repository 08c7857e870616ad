"""The training loop: one ``Trainer`` holds a run's networks, optimisers and pools, takes steps and keeps to budgets.

The objective is the published CycleGAN's (training/losses.py), with the options that survived their ablations:
DiffAugment on the judges' inputs, the Projected GAN judge (``d_projected``) and a moving average of the generators
(``ema_decay``). The run folder it writes is training/checkpoint.py's.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from simpsonize.model.networks import DiscriminatorConfig
from simpsonize.training import checkpoint
from simpsonize.training.averaging import generator_average
from simpsonize.training.config import TrainConfig
from simpsonize.training.data import StepBatches, UnpairedFaces, load_fixed
from simpsonize.training.ddp import Distributed, any_rank, main_rank_choice, wrap
from simpsonize.training.losses import LOSS_NAMES, cycle_and_identity, discriminator_lsgan, linear_decay, lsgan
from simpsonize.training.networks import Discriminators, Generators
from simpsonize.training.pool import ImagePool
from simpsonize.training.precision import choose_channels_last, choose_precision, hardware_name
from simpsonize.training.projected import DEFAULT_POLICY, projected_lsgan


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        device: str | None = None,
        num_workers: int | None = None,
        dist_info: Distributed | None = None,
        precision: tuple[bool, str] | None = None,
        layout: tuple[bool, str] | None = None,
    ) -> None:
        self.config = config
        self.dist = dist_info or Distributed()
        config.validate()
        if device in (None, "", "auto"):
            device = f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        # ``precision`` and ``layout`` (channels_last or not): choices made earlier in this run on this same hardware,
        # each with its reason (resume keeps them: a timing probe could flip on a busy machine, and the run would then
        # no longer continue exactly). The layout choice reuses what the precision probe timed; under DDP every rank
        # takes rank 0's choices.
        timings: dict = {}
        self.bf16, self.precision_reason = main_rank_choice(
            precision or choose_precision(config, self.device, timings), self.dist, self.device
        )
        self.channels_last, self.layout_reason = main_rank_choice(
            layout or choose_channels_last(config, self.device, self.bf16, timings), self.dist, self.device
        )
        self.out = Path(config.out)

        torch.manual_seed(config.seed)  # same initial weights on every rank
        self.dataset = UnpairedFaces(config.data, "train", config.size, seed=config.seed)
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(len(self.dataset) / config.batch_size)
        self.total_steps = (config.epochs + config.epochs_decay) * self.steps_per_epoch
        self.num_workers = (2 if cuda else 0) if num_workers is None else num_workers

        self.G = Generators(config.generator_config()).to(self.device)
        self.D = Discriminators(
            DiscriminatorConfig(ndf=config.ndf),
            projected=config.d_projected,
            image_size=config.size,
            projected_policy=config.diff_augment or DEFAULT_POLICY,
            seed=config.seed,
        ).to(self.device)
        if config.diff_augment:
            from simpsonize.training.augment import diff_augment

            self.D.augment = lambda x: diff_augment(x, config.diff_augment)
        if self.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.projected = config.d_projected != "off"
        self._build_optimisers()
        # Only the main process saves, and DDP keeps every rank's generators identical, so only it averages.
        self.G_ema = generator_average(self.G, config.ema_decay) if config.ema_decay and self.dist.is_main else None
        self.pool_A = ImagePool(config.pool_size, seed=config.seed * 1000 + 2 * self.dist.rank)  # fakes of A->B
        self.pool_B = ImagePool(config.pool_size, seed=config.seed * 1000 + 2 * self.dist.rank + 1)
        self.step = 0

        self.G_train, self.D_train = self.G, self.D
        if self.dist.world_size > 1:
            # The projected judge's frozen network is 4.7 M floats of buffers; DDP would broadcast them from rank 0
            # before every forward. They never change, so the ranks stay in step without it.
            self.G_train = wrap(self.G, self.device)
            self.D_train = wrap(self.D, self.device, broadcast_buffers=not self.projected)

        fixed = min(4, len(self.dataset.files_a), len(self.dataset.files_b))
        test_root = Path(config.data)
        sample_a = sorted((test_root / "testA").glob("*")) or self.dataset.files_a
        sample_b = sorted((test_root / "testB").glob("*")) or self.dataset.files_b
        self.sample_A = load_fixed(sample_a[:fixed], config.size).to(self.device)
        self.sample_B = load_fixed(sample_b[:fixed], config.size).to(self.device)

    def _build_optimisers(self) -> None:
        """Adam for the generators, for D_A and D_B, and one for each optional judge, each with the same schedule;
        separate ones, so that a run without a judge keeps exactly the optimiser state of the published recipe
        (and --init-from can start a judge fresh beside networks that continue)."""
        c = self.config
        betas = (c.beta1, 0.999)
        lr_d = c.lr_d or c.lr
        schedule = linear_decay(c.epochs, c.epochs_decay, self.steps_per_epoch)

        def scheduled(parameters, lr: float):
            optimizer = torch.optim.Adam(parameters, lr=lr, betas=betas)
            return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

        self.opt_G, self.sched_G = scheduled(self.G.parameters(), c.lr)
        self.opt_D, self.sched_D = scheduled([*self.D.D_A.parameters(), *self.D.D_B.parameters()], lr_d)
        # The projected judge's frozen parts are buffers: its optimiser sees only its heads.
        if self.projected:
            self.opt_D_projected, self.sched_D_projected = scheduled(self.D.D_B_projected.parameters(), lr_d)

    def _discriminator_optimisers(self) -> list[tuple[torch.optim.Optimizer, object]]:
        parts = [(self.opt_D, self.sched_D)]
        if self.projected:
            parts.append((self.opt_D_projected, self.sched_D_projected))
        return parts

    # ----------------------------------------------------------------------------------------- one step
    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        """One step of every network; the losses, by ``LOSS_NAMES``."""
        c = self.config
        if self.channels_last:
            real_A = real_A.contiguous(memory_format=torch.channels_last)
            real_B = real_B.contiguous(memory_format=torch.channels_last)
        zero = torch.zeros((), device=self.device)

        # Generators: the judges are frozen so that their gradients stay clean for their own step.
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.G_train(real_A, real_B, c.lambda_identity > 0)
            loss_G_A = lsgan(self.D.D_A(self.D.augment(out["fake_B"])), True)
            loss_G_B = lsgan(self.D.judge_simpsons(out["fake_A"]), True)
            loss_G_B_proj = projected_lsgan(self.D.judge_projected(out["fake_A"]), True) if self.projected else zero
        l1 = cycle_and_identity(out, real_A, real_B, c.lambda_cycle, c.lambda_identity)
        # Each judge pushes with its full weight (summed, not averaged): an average would halve the PatchGAN's push
        # against the cycle and so change the balance of the recipe the judges are compared with. A judge that is
        # off adds an exact 0, so without it the sum is the published objective's to the bit.
        loss_G = loss_G_A + loss_G_B + l1["cycle_A"] + l1["cycle_B"] + l1["idt_A"] + l1["idt_B"] + loss_G_B_proj
        loss_G.backward()
        self.opt_G.step()

        # Discriminators, on real images and on fakes drawn from the history pools.
        self.D.requires_grad_(True)
        for optimizer, _ in self._discriminator_optimisers():
            optimizer.zero_grad(set_to_none=True)
        fake_B = self.pool_A.query(out["fake_B"].detach().float())
        fake_A = self.pool_B.query(out["fake_A"].detach().float())
        if self.channels_last:
            fake_A = fake_A.contiguous(memory_format=torch.channels_last)
            fake_B = fake_B.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            real_b, fake_b, real_a, fake_a, real_proj, fake_proj = self.D_train(real_A, real_B, fake_A, fake_B)
            loss_D_A = discriminator_lsgan(real_b, fake_b)
            loss_D_B = discriminator_lsgan(real_a, fake_a)
            loss_D_B_proj = (
                0.5 * (projected_lsgan(real_proj, True) + projected_lsgan(fake_proj, False)) if self.projected else zero
            )
        (loss_D_A + loss_D_B + loss_D_B_proj).backward()
        for optimizer, scheduler in self._discriminator_optimisers():
            optimizer.step()
            scheduler.step()

        self.sched_G.step()
        self.step += 1
        values = (
            loss_D_A,
            loss_G_A,
            l1["cycle_A"],
            l1["idt_A"],
            loss_D_B,
            loss_G_B,
            l1["cycle_B"],
            l1["idt_B"],
            loss_D_B_proj,
            loss_G_B_proj,
        )
        return {name: float(v.detach()) for name, v in zip(LOSS_NAMES, values)}

    # ------------------------------------------------------------------------------------ the run folder
    def networks(self) -> tuple[tuple[str, nn.Module], ...]:
        """The four networks by their checkpoint names."""
        return (("G_A", self.G.G_A), ("G_B", self.G.G_B), ("D_A", self.D.D_A), ("D_B", self.D.D_B))

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where the trainer is (checkpoint.pt)."""
        state = {
            "config": self.config.to_dict(),
            "step": self.step,
            "precision": {"bf16": self.bf16, "reason": self.precision_reason, "hardware": hardware_name(self.device)},
            "layout": {
                "channels_last": self.channels_last,
                "reason": self.layout_reason,
                "hardware": hardware_name(self.device),
            },
            **{name: module.state_dict() for name, module in self.networks()},
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "sched_G": self.sched_G.state_dict(),
            "sched_D": self.sched_D.state_dict(),
            "pool_A": self.pool_A.state_dict(),
            "pool_B": self.pool_B.state_dict(),
        }
        if self.G_ema is not None:
            state["G_ema"] = self.G_ema.state_dict()
        if self.projected:  # its heads and random mixing; the pretrained network comes from its package
            state.update(
                D_B_projected=self.D.D_B_projected[0].trained_state_dict(),
                opt_D_projected=self.opt_D_projected.state_dict(),
                sched_D_projected=self.sched_D_projected.state_dict(),
            )
        state["rng"] = checkpoint.rng_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Back to where ``state_dict`` was taken (the same run, resumed)."""
        self.step = int(state["step"])
        for name, module in self.networks():
            module.load_state_dict(state[name])
        for name in ("opt_G", "opt_D", "sched_G", "sched_D"):
            getattr(self, name).load_state_dict(state[name])
        self.pool_A.load_state_dict(state["pool_A"], self.device)
        self.pool_B.load_state_dict(state["pool_B"], self.device)
        if self.G_ema is not None and "G_ema" in state:  # without it (--ema-decay added on resume) it starts here
            self.G_ema.load_state_dict(state["G_ema"])
        if self.projected:
            self.D.D_B_projected[0].load_trained_state_dict(state["D_B_projected"])
            self.opt_D_projected.load_state_dict(state["opt_D_projected"])
            self.sched_D_projected.load_state_dict(state["sched_D_projected"])
        checkpoint.restore_rng(state["rng"])

    def load_networks(self, source: str | Path) -> int:
        """Start from the four networks of another run (a run folder or its checkpoint.pt) and their Adam moments;
        return its step. Fine-tuning a trained run with a changed objective costs a fraction of training from
        scratch, and compares changes from the same starting point. The learning rates follow this run's schedule:
        both with and without the moments, a trained CycleGAN diverged within five steps when its rate jumped to
        2e-4; 5e-5 held."""
        state = checkpoint.read_source(source, self.config)
        for name, module in self.networks():
            module.load_state_dict(state[name])
        checkpoint.continue_optimiser(self.opt_G, self.sched_G, state["opt_G"])
        checkpoint.continue_optimiser(self.opt_D, self.sched_D, state["opt_D"])
        if self.projected and "D_B_projected" in state:  # from a run without the judge, it starts fresh
            self.D.D_B_projected[0].load_trained_state_dict(state["D_B_projected"])
            checkpoint.continue_optimiser(self.opt_D_projected, self.sched_D_projected, state["opt_D_projected"])
        return int(state["step"])

    def save_checkpoint(self) -> Path:
        return checkpoint.save_checkpoint(self.out, self.state_dict())

    def save_snapshot(self) -> Path:
        """Both generators at this step, so `test --all-snapshots` can rank them; with --ema-decay their moving
        average too, in a folder of its own (step_N_ema), ranked beside them."""
        folder = self.out / "snapshots" / f"step_{self.step:07d}"
        meta = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "run": str(self.out),
            "framing": self.dataset.framing,
        }
        checkpoint.save_generators(folder, self.G, self.config.size, meta)
        if self.G_ema is not None:
            checkpoint.save_generators(
                folder.with_name(folder.name + "_ema"),
                self.G_ema.module,
                self.config.size,
                {**meta, "ema_decay": self.config.ema_decay},
            )
        return folder

    @torch.no_grad()
    def save_samples(self) -> Path:
        from simpsonize.training.visuals import save_grid

        self.G.eval()
        with self.autocast():
            fake_B = self.G.G_A(self.sample_A).float()
            rec_A = self.G.G_B(fake_B).float()
            fake_A = self.G.G_B(self.sample_B).float()
            rec_B = self.G.G_A(fake_A).float()
        self.G.train()
        rows = {
            "real_A": self.sample_A,
            "fake_B": fake_B,
            "rec_A": rec_A,
            "real_B": self.sample_B,
            "fake_A": fake_A,
            "rec_B": rec_B,
        }
        return save_grid(self.out / "samples" / f"step_{self.step:07d}.png", rows)

    # -------------------------------------------------------------------------------------- the loop
    def fit(
        self, max_minutes: float | None = None, max_steps: int | None = None, max_cpu_minutes: float | None = None
    ) -> dict:
        """Train until the schedule ends or a budget runs out. ``max_cpu_minutes`` counts this process's CPU time
        (all its threads), so ablation arms get equal compute even when something else shares the machine."""
        c = self.config
        started = time.time()
        cpu_started = time.process_time()
        last_checkpoint = started
        end_step = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        sample_every = c.sample_every or self.steps_per_epoch
        loader = DataLoader(
            self.dataset,
            batch_sampler=StepBatches(self.step, end_step, c.batch_size, self.dist.world_size, self.dist.rank),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # The loader draws a seed for its workers when it starts; from its own generator, so that starting it
            # again on --resume does not move torch's global RNG (DiffAugment draws from that one).
            generator=torch.Generator().manual_seed(c.seed * 1_000_003 + self.step),
        )
        main = self.dist.is_main
        log = checkpoint.LossLog(self.out / "losses.csv", resume_step=self.step) if main else None
        progress = None
        if main:
            from tqdm import tqdm

            progress = tqdm(total=end_step, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        stopped_by_clock = False
        step_started = time.time()
        for batch in loader:
            losses = self.train_step(
                batch["A"].to(self.device, non_blocking=True), batch["B"].to(self.device, non_blocking=True)
            )
            if self.G_ema is not None:
                self.G_ema.update_parameters(self.G)
            now = time.time()
            if main:
                log.write(
                    self.step,
                    self.step / self.steps_per_epoch,
                    self.sched_G.get_last_lr()[0],
                    losses,
                    now - step_started,
                )
                progress.update(1)
                if self.step % 20 == 0:
                    progress.set_postfix({k: f"{v:.2f}" for k, v in losses.items() if k in ("G_B", "D_B", "cycle_B")})
                if self.step % sample_every == 0:
                    self.save_samples()
                if c.snapshot_every and self.step % c.snapshot_every == 0:
                    self.save_snapshot()
            step_started = now
            over_budget = (max_minutes is not None and (now - started) / 60 >= max_minutes) or (
                max_cpu_minutes is not None and (time.process_time() - cpu_started) / 60 >= max_cpu_minutes
            )
            over_budget = any_rank(over_budget, self.dist, self.device)  # every rank must stop on the same step
            if main and (now - last_checkpoint) / 60 >= c.checkpoint_minutes:
                self.save_checkpoint()
                last_checkpoint = now
            if over_budget:
                stopped_by_clock = True
                break
        if progress is not None:
            progress.close()
        minutes = (time.time() - started) / 60
        cpu_minutes = (time.process_time() - cpu_started) / 60
        if main:
            self.save_checkpoint()
            self.save_samples()
            if c.snapshot_every:
                self.save_snapshot()
            log.close()
            from simpsonize.training.visuals import plot_losses

            plot_losses(self.out / "losses.csv", self.out / "losses.png")
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "minutes": minutes,
            "cpu_minutes": cpu_minutes,
            "stopped_by_clock": stopped_by_clock,
            "finished": self.step >= self.total_steps,
        }
