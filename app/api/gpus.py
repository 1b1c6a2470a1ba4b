from fastapi import APIRouter, Depends

from app.api.auth import UNAUTHORIZED, current_user
from app.api.deps import SessionDep
from app.api.schemas import GpuOut, HostOut
from app.core.config import get_settings
from app.core.hosts import all_hosts, gpu_state, holders
from app.core.models import utcnow

router = APIRouter(
    prefix="/gpus", tags=["gpus"], dependencies=[Depends(current_user)], responses=UNAUTHORIZED
)


@router.get("", response_model=list[HostOut])
def list_gpus(session: SessionDep) -> list[HostOut]:
    """Every worker host and its GPUs: who holds each one, or which are busy with foreign work."""
    settings = get_settings()
    now = utcnow()
    held = holders(session)
    hosts = []
    for host in all_hosts(session):
        gpus = []
        for gpu in host.gpus:
            job = held.get((host.name, gpu.index))
            state = gpu_state(gpu, job)
            gpus.append(
                GpuOut(
                    index=gpu.index,
                    name=gpu.name,
                    uuid=gpu.uuid,
                    memory_total_mib=gpu.memory_total_mib,
                    memory_used_mib=gpu.memory_used_mib,
                    utilization_percent=gpu.utilization_percent,
                    state=state,
                    job_id=job.id if job else None,
                    user=job.owner.name if job and job.owner else None,
                    foreign_pids=gpu.foreign_pids,
                )
            )
        age = (now - host.last_heartbeat).total_seconds()
        hosts.append(
            HostOut(
                name=host.name,
                simulated=host.simulated,
                gpu_source=host.gpu_source,
                last_heartbeat=host.last_heartbeat,
                alive=age <= settings.host_timeout_seconds,
                gpus=gpus,
            )
        )
    return hosts
