"""Console forms. They shape input for the page; the rules are the API's: each form validates through the API's own
input serializer (same lengths, same choices, same messages) before the service, which enforces the rest."""

from django import forms
from django.conf import settings
from rest_framework import serializers

from console.errors import _flatten_drf
from deployments.api import (
    AclRuleCreateSerializer,
    DeploymentCreateSerializer,
    DeploymentUpdateSerializer,
    MqttUserCreateSerializer,
    MqttUserUpdateSerializer,
)
from deployments.models import RateLimitPolicy
from organizations.api import (
    ApiKeyCreateSerializer,
    ApiKeyRotateSerializer,
    InvitationCreateSerializer,
    OrganizationCreateSerializer,
    OrganizationDeleteSerializer,
    OrganizationUpdateSerializer,
)
from organizations.roles import Role
from projects.api import ProjectCreateSerializer, ProjectUpdateSerializer


class ConsoleForm(forms.Form):
    """Labels without Django's trailing colon: the layout puts each label above its field. A file field carries the
    body size the server accepts (`data-max-bytes`): console.js refuses a larger file beside the field when it is
    chosen, where the server could only answer 413 before any view, and so without the form."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if isinstance(field.widget, forms.FileInput):
                field.widget.attrs["data-max-bytes"] = str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


class ApiForm(ConsoleForm):
    """A form whose cleaned data is also validated by `serializer_class`, the API's input serializer for the same
    operation; its messages land beside the fields of the same name."""

    serializer_class: type[serializers.Serializer] | None = None

    def serializer_data(self) -> dict:
        fields = self.serializer_class().fields
        return {
            name: value
            for name, value in self.cleaned_data.items()
            if name in fields and value is not None and (value != "" or getattr(fields[name], "allow_blank", False))
        }

    def clean(self):
        cleaned = super().clean()
        if self.serializer_class is None or self.errors:
            return cleaned
        serializer = self.serializer_class(data=self.serializer_data())
        if serializer.is_valid():
            self.validated = dict(serializer.validated_data)
        else:
            for field, messages in _flatten_drf(serializer.errors).items():
                name = field.split(".")[0]
                self.add_error(name if name in self.fields else None, messages)
        return cleaned


# --- Invitation acceptance ------------------------------------------------------------------------------------


class InvitationAcceptForm(ConsoleForm):
    full_name = forms.CharField(max_length=150, required=False)
    password = forms.CharField(widget=forms.PasswordInput, max_length=128, required=False)


# --- Organization and projects ------------------------------------------------------------------------------------


class OrganizationRenameForm(ApiForm):
    serializer_class = OrganizationUpdateSerializer
    name = forms.CharField(label="Organization name")


class OrganizationCreateForm(ApiForm):
    serializer_class = OrganizationCreateSerializer
    name = forms.CharField(label="Organization name")


class OrganizationDeleteForm(ApiForm):
    serializer_class = OrganizationDeleteSerializer
    confirm_name = forms.CharField(label="Type the organization's name to confirm")


class ProjectForm(ApiForm):
    serializer_class = ProjectCreateSerializer
    name = forms.CharField(label="Project name")
    description = forms.CharField(label="Description", required=False, widget=forms.Textarea(attrs={"rows": 2}))


class ProjectUpdateForm(ProjectForm):
    serializer_class = ProjectUpdateSerializer


class MoveDeploymentForm(ConsoleForm):
    project = forms.ChoiceField(label="Move to project")

    def __init__(self, *args, projects=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["project"].choices = [(p.public_id, p.name) for p in projects]


# --- Members and invitations --------------------------------------------------------------------------------------


class InvitationForm(ApiForm):
    serializer_class = InvitationCreateSerializer
    email = forms.CharField(label="Email address", widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(label="Role", widget=forms.RadioSelect)
    projects = forms.MultipleChoiceField(
        label="Projects",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="For the Project Administrator and Project User roles: the projects they get.",
    )

    def __init__(self, *args, roles=(), projects=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r.value, r.label) for r in roles]
        self.fields["projects"].choices = [(p.public_id, p.name) for p in projects]

    def serializer_data(self) -> dict:
        role = self.cleaned_data["role"]
        if role in (Role.PROJECT_ADMINISTRATOR, Role.PROJECT_USER):
            grants = [{"project": p, "role": role} for p in self.cleaned_data.get("projects", [])]
            return {"email": self.cleaned_data["email"], "roles": [], "project_grants": grants}
        return {"email": self.cleaned_data["email"], "roles": [role], "project_grants": []}

    def clean(self):
        cleaned = super().clean()
        role = cleaned.get("role")
        if role in (Role.PROJECT_ADMINISTRATOR, Role.PROJECT_USER) and not cleaned.get("projects"):
            self.add_error("projects", "Choose at least one project for a project role.")
        return cleaned


class MemberForm(ConsoleForm):
    """Organization roles as checkboxes, and one project role (or none) per project."""

    roles = forms.MultipleChoiceField(label="Organization roles", required=False, widget=forms.CheckboxSelectMultiple)

    NO_GRANT = ""

    def __init__(self, *args, roles=(), projects=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["roles"].choices = [(r.value, r.label) for r in roles]
        self.projects = list(projects)
        for project in self.projects:
            self.fields[f"grant_{project.public_id}"] = forms.ChoiceField(
                label=project.name,
                required=False,
                choices=[
                    (self.NO_GRANT, "No access"),
                    (Role.PROJECT_USER.value, Role.PROJECT_USER.label),
                    (Role.PROJECT_ADMINISTRATOR.value, Role.PROJECT_ADMINISTRATOR.label),
                ],
            )

    def grant_fields(self):
        return [self[f"grant_{p.public_id}"] for p in self.projects]

    def project_grants(self) -> list[dict]:
        return [
            {"project": p.public_id, "role": self.cleaned_data[f"grant_{p.public_id}"]}
            for p in self.projects
            if self.cleaned_data.get(f"grant_{p.public_id}")
        ]


class TransferOwnershipForm(ConsoleForm):
    member = forms.ChoiceField(label="New Owner")

    def __init__(self, *args, members=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.offer(members)

    def offer(self, members) -> None:
        """The members the select offers."""
        field = self.fields["member"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [(m.public_id, m.user.email) for m in members]


# --- API keys -----------------------------------------------------------------------------------------------------


class ApiKeyCreateForm(ApiForm):
    serializer_class = ApiKeyCreateSerializer
    name = forms.CharField(label="Name")
    role = forms.ChoiceField(label="Role")
    projects = forms.MultipleChoiceField(
        label="Limit to projects",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked for the whole organization.",
    )
    expires_at = forms.DateTimeField(
        label="Expires",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional. In UTC; leave empty for a key that does not expire.",
    )

    def __init__(self, *args, roles=(), projects=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r.value, r.label) for r in roles]
        self.fields["projects"].choices = [(p.public_id, p.name) for p in projects]

    def serializer_data(self) -> dict:
        data = super().serializer_data()
        data["projects"] = list(self.cleaned_data.get("projects") or [])
        return data


class ApiKeyRotateForm(ApiForm):
    serializer_class = ApiKeyRotateSerializer
    overlap_seconds = forms.TypedChoiceField(
        label="Old secret keeps working for",
        coerce=int,
        choices=[(0, "No overlap: stop at once"), (600, "10 minutes"), (3600, "1 hour"), (86400, "24 hours")],
        initial=3600,
    )


# --- Audit log ----------------------------------------------------------------------------------------------------


class AuditFilterForm(ConsoleForm):
    actor = forms.CharField(label="Actor", required=False, help_text="Email address or user id.")
    action = forms.CharField(label="Action", required=False, help_text="Exact, or a prefix ending in '.' (project.)")
    target = forms.CharField(label="Target id", required=False)
    since = forms.DateTimeField(
        label="From", required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), help_text="UTC"
    )
    until = forms.DateTimeField(
        label="Until", required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), help_text="UTC"
    )


# --- Deployments --------------------------------------------------------------------------------------------------


class DeploymentCreateForm(ApiForm):
    serializer_class = DeploymentCreateSerializer
    plan = forms.ChoiceField(label="Plan", widget=forms.RadioSelect)
    region = forms.ChoiceField(label="Region")
    tier = forms.ChoiceField(label="Tier", widget=forms.RadioSelect)
    billing_cycle = forms.ChoiceField(
        label="Billing",
        widget=forms.RadioSelect,
        choices=[("hourly", "Hourly"), ("annual", "Annual, prepaid")],
        initial="hourly",
    )
    name = forms.CharField(label="Deployment name", help_text="Unique in the project; 1 to 64 characters.")

    def __init__(self, *args, plans=(), regions=(), tiers=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["plan"].choices = [(p.code, p.name) for p in plans]
        self.fields["region"].choices = [(r.code, r.display_name) for r in regions]
        self.fields["tier"].choices = [(t.code, t.code) for t in tiers]


class DeploymentRenameForm(ApiForm):
    serializer_class = DeploymentUpdateSerializer
    name = forms.CharField(label="Deployment name")


class ChangeTierForm(ConsoleForm):
    tier = forms.ChoiceField(label="New tier")

    def __init__(self, *args, tiers=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tier"].choices = [
            (t.code, f"{t.code}: {t.max_connections:,} sessions, {t.messages_per_second:,} msg/s") for t in tiers
        ]


class DeleteDeploymentForm(ConsoleForm):
    confirm_name = forms.CharField(label="Type the deployment's name to confirm", strip=False, required=True)

    def __init__(self, *args, deployment=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.deployment = deployment

    def clean_confirm_name(self):
        value = self.cleaned_data["confirm_name"]
        if value != self.deployment.name:
            raise forms.ValidationError(
                "That is not the deployment's name; nothing was deleted. Type it exactly, as shown above."
            )
        return value


class MqttUserForm(ApiForm):
    serializer_class = MqttUserCreateSerializer
    username = forms.CharField(label="Username", strip=False, widget=forms.TextInput(attrs={"autocomplete": "off"}))
    password = forms.CharField(
        label="Password",
        strip=False,
        help_text="At least 8 characters. Stored hashed: it is never shown again.",
        widget=forms.PasswordInput(
            attrs={"autocomplete": "new-password", "data-reveal-while-typing": ""}, render_value=False
        ),
    )


class MqttPasswordForm(ApiForm):
    serializer_class = MqttUserUpdateSerializer
    password = forms.CharField(
        label="New password",
        strip=False,
        widget=forms.PasswordInput(
            attrs={"autocomplete": "new-password", "data-reveal-while-typing": ""}, render_value=False
        ),
    )


class AclRuleForm(ApiForm):
    serializer_class = AclRuleCreateSerializer
    permission = forms.ChoiceField(label="Permission", choices=[("allow", "Allow"), ("deny", "Deny")])
    action = forms.ChoiceField(
        label="Action", choices=[("publish", "Publish"), ("subscribe", "Subscribe"), ("all", "Publish and subscribe")]
    )
    topic = forms.CharField(label="Topic filter", strip=False, help_text="'+' and '#' only as whole levels, '#' last.")
    username = forms.CharField(
        label="For username", required=False, strip=False, help_text="Leave both empty for everyone."
    )
    client_id = forms.CharField(label="For client id", required=False, strip=False)


RATE_FIELDS = (("max_conn_rate", "Connections/s"), ("messages_rate", "Messages/s"), ("bytes_rate", "Bytes/s"))
RATE_LEVELS = (("global", "Global"), ("zone", "Zone"), ("listener", "Listener"), ("connection", "Connection"))


class RateLimitsForm(ConsoleForm):
    """Four levels, three rates each; empty means no limit at that level."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for level, level_label in RATE_LEVELS:
            for field, field_label in RATE_FIELDS:
                self.fields[f"{level}-{field}"] = forms.IntegerField(
                    label=f"{level_label} {field_label.lower()}",
                    required=False,
                    min_value=1,
                    max_value=RateLimitPolicy.MAX_RATES[field],
                )

    def policies(self) -> list[dict]:
        out = []
        for level, _ in RATE_LEVELS:
            values = {field: self.cleaned_data.get(f"{level}-{field}") for field, _ in RATE_FIELDS}
            if any(v is not None for v in values.values()):
                out.append({"level": level, **values})
        return out
