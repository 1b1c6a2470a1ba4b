"""HTTP routers, one per resource, gathered in `api_router`."""

from fastapi import APIRouter

from app.api import datasets, events, gpus, health, jobs, me, metrics, models, plots

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(jobs.router)
api_router.include_router(datasets.router)
api_router.include_router(gpus.router)
api_router.include_router(plots.router)
api_router.include_router(events.router)
api_router.include_router(metrics.router)
api_router.include_router(me.router)
api_router.include_router(models.router)
