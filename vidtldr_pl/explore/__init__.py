"""See, compare, choose: decode-once evaluation data, schedule families, Pareto fronts, budget fitting and schedule
search (pure functions; the Lightning glue lives in ``vidtldr_pl.sweep`` / ``vidtldr_pl.search``)."""
from .cache import CachedEvalDataModule
from .families import FAMILIES, family_schedule, parse_schedule, parse_schedules
from .pareto import pareto_front

__all__ = ["FAMILIES", "CachedEvalDataModule", "family_schedule", "pareto_front", "parse_schedule", "parse_schedules"]
