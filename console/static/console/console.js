// The console's only script of its own. Everything here enhances a page that already works without JavaScript:
// copy buttons, showing a password while it is typed, submitting a filter form on change. No inline handlers
// anywhere (the Content-Security-Policy forbids them); behaviour hangs on data- attributes.
(function () {
  "use strict";

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } finally { document.body.removeChild(area); }
    return Promise.resolve();
  }

  document.addEventListener("click", function (event) {
    var copy = event.target.closest("[data-copy]");
    if (copy) {
      var source = document.getElementById(copy.getAttribute("data-copy"));
      if (!source) { return; }
      var label = copy.textContent;
      var name = copy.getAttribute("aria-label");
      copyText(source.textContent.trim()).then(function () {
        // The accessible name keeps the visible word in it ("Copied: Copy command 3" while "Copied" shows).
        copy.textContent = "Copied";
        if (name) { copy.setAttribute("aria-label", "Copied: " + name); }
        setTimeout(function () {
          copy.textContent = label;
          if (name) { copy.setAttribute("aria-label", name); }
        }, 1500);
      });
      return;
    }
    var toggle = event.target.closest("[data-toggle-password]");
    if (toggle) {
      var input = document.getElementById(toggle.getAttribute("data-toggle-password"));
      if (!input) { return; }
      var show = input.type === "password";
      input.type = show ? "text" : "password";
      toggle.setAttribute("aria-pressed", show ? "true" : "false");
      toggle.textContent = show ? "Hide" : "Show";
      if (show) { input.focus(); }  // back to typing; leaving the field masks it again
    }
  });

  // A password is visible only while it is being typed: once the field loses focus it is masked again.
  document.addEventListener("focusout", function (event) {
    var input = event.target;
    if (input.matches && input.matches("input[data-reveal-while-typing]") && input.type === "text") {
      var toggle = document.querySelector('[data-toggle-password="' + input.id + '"]');
      if (toggle && event.relatedTarget === toggle) { return; }
      input.type = "password";
      if (toggle) { toggle.setAttribute("aria-pressed", "false"); toggle.textContent = "Show"; }
    }
  });

  // A form for several kinds of one thing (notification channels): only the chosen kind's fieldset is shown. Without
  // JavaScript every fieldset shows, each under its kind's name, and the server reads only the chosen one.
  function showKind(form) {
    var chosen = form.querySelector('input[type="radio"][name$="type"]:checked');
    form.querySelectorAll("fieldset[data-kind]").forEach(function (set) {
      set.hidden = !!chosen && set.getAttribute("data-kind") !== chosen.value;
    });
  }
  document.querySelectorAll("form[data-kind-form]").forEach(showKind);
  document.addEventListener("change", function (event) {
    var form = event.target.closest && event.target.closest("form[data-kind-form]");
    if (form) { showKind(form); }
  });

  // A chosen file larger than the server takes (data-max-bytes, the body limit) is refused beside its field at once,
  // in the server's words: sent, it would be answered 413 before any form could say so. The field stays invalid, so
  // the form is not submitted, until a smaller file is chosen.
  document.addEventListener("change", function (event) {
    var input = event.target;
    if (!input.matches || !input.matches('input[type="file"][data-max-bytes]')) { return; }
    var limit = parseInt(input.getAttribute("data-max-bytes"), 10);
    var size = 0;
    for (var i = 0; i < input.files.length; i++) { size += input.files[i].size; }
    var id = input.id + "_size_error";
    var list = document.getElementById(id);
    var described = (input.getAttribute("aria-describedby") || "").split(" ").filter(function (part) {
      return part && part !== id;
    });
    if (size <= limit) {
      input.setCustomValidity("");
      if (list) { list.remove(); }
      input.removeAttribute("aria-invalid");
    } else {
      var message = "The file is " + size.toLocaleString("en") + " bytes; the limit is " +
        limit.toLocaleString("en") + " bytes.";
      input.setCustomValidity(message);
      if (!list) {
        list = document.createElement("ul");
        list.className = "errorlist";
        list.id = id;
        list.appendChild(document.createElement("li"));
        input.parentNode.insertBefore(list, input);
      }
      list.firstChild.textContent = message;
      input.setAttribute("aria-invalid", "true");
      described.push(id);
    }
    if (described.length) { input.setAttribute("aria-describedby", described.join(" ")); }
    else { input.removeAttribute("aria-describedby"); }
  });
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var refused = form.querySelector && form.querySelector('input[type="file"][data-max-bytes][aria-invalid="true"]');
    if (refused && refused.validationMessage) {
      event.preventDefault();
      refused.focus();
    }
  });

  // Buttons that exist only for pages without JavaScript (htmx updates the page on change instead).
  document.documentElement.classList.add("js");
})();
