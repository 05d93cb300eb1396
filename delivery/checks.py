"""System checks of the send engine's settings (``manage.py check``, and every management command)."""

from django.core import checks


@checks.register(checks.Tags.compatibility)
def send_lease(app_configs, **kwargs):
    from delivery.engine import lease_problem

    problem = lease_problem()
    return [checks.Error(problem, id="delivery.E001")] if problem else []
