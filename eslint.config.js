// ESLint for the course's JavaScript: the simulator's widget and the website's small scripts.
// `make unit` runs it (npx eslint), clean; ESLint comes from npm (package.json), like axe-core.
import js from "@eslint/js";
import globals from "globals";

export default [
  js.configs.recommended,
  {
    files: ["tlhelpers/simulator/static/**/*.js", "scripts/book_static/**/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: { ...globals.browser } },
    rules: {
      "no-unused-vars": ["error", { argsIgnorePattern: "^_" }],
      eqeqeq: ["error", "smart"],
      "prefer-const": "error",
      "no-var": "error",
    },
  },
];
