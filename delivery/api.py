from ninja import Router

from delivery.api_domains import router as domains_router
from delivery.api_engine import router as engine_router
from delivery.api_routing import router as routing_router
from delivery.api_warmup import router as warmup_router

router = Router()
router.add_router("/", engine_router)
router.add_router("/", domains_router)
router.add_router("/", routing_router)
router.add_router("/", warmup_router)
