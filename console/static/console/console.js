// Organization and project switchers: navigate on change (no inline handlers: the CSP forbids them).
document.querySelectorAll("select[data-nav]").forEach(function (select) {
  select.addEventListener("change", function () { if (select.value) { window.location.href = select.value; } });
});
