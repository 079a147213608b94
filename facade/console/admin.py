"""Administration: the locations (listed to everyone, created by admins) and users' roles.
AuthService lists no users, so a role is set by the account's email (SetUserRole)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from facade.console.calls import ApiError, Caller, Refused, stubs
from facade.console.forms import Form
from facade.console.session import Session
from facade.console.web import Console
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb

AUTH = auth_pb.DESCRIPTOR.services_by_name["AuthService"].methods_by_name
INVENTORY = inventory_pb.DESCRIPTOR.services_by_name["InventoryService"].methods_by_name
ROLES = ("viewer", "staff", "admin")
DONE = {"location": "Location created."}


def routes(console: Console) -> list[Route]:
    async def show(
        request: Request,
        session: Session,
        call: Caller,
        *,
        failed: str = "",
        error: ApiError | None = None,
        form: Form | None = None,
        user: auth_pb.User | None = None,
    ) -> Response:
        places = await call(
            stubs(request).inventory.ListLocations, inventory_pb.ListLocationsRequest(page_size=500)
        )
        context = {
            "locations": places.locations,
            "roles": ROLES,
            "user": user,
            "done": DONE.get(request.query_params.get("done", ""), ""),
            "failed": failed,
            "error": error,
            "form": form.values if form is not None else {},
            "may": {
                "set_role": session.may(AUTH["SetUserRole"]),
                "create_location": session.may(INVENTORY["CreateLocation"]),
            },
        }
        return console.render(request, session, "admin.html", context, error.status if error else 200)

    async def page(request: Request, session: Session, call: Caller) -> Response:
        return await show(request, session, call)

    async def set_role(request: Request, session: Session, call: Caller, form: Form) -> Response:
        change = auth_pb.SetUserRoleRequest(email=form.text("email"), role=form.text("role"))
        try:
            reply = await call(stubs(request).auth.SetUserRole, change)
        except Refused as refusal:
            return await show(request, session, call, failed="role", error=refusal.error, form=form)
        # The account as it is now, shown at once: there is no list of users to go back to.
        return await show(request, session, call, user=reply.user)

    async def create_location(request: Request, session: Session, call: Caller, form: Form) -> Response:
        location = inventory_pb.Location(code=form.text("code"), name=form.text("name"))
        try:
            await call(
                stubs(request).inventory.CreateLocation, inventory_pb.CreateLocationRequest(location=location)
            )
        except Refused as refusal:
            return await show(request, session, call, failed="location", error=refusal.error, form=form)
        return RedirectResponse("/console/admin?done=location", status_code=303)

    return [
        Route("/admin", console.page(page), methods=["GET"]),
        Route("/admin/roles", console.action(set_role), methods=["POST"]),
        Route("/admin/locations", console.action(create_location), methods=["POST"]),
    ]
