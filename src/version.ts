import pkg from "../package.json" with { type: "json" };

// `npm run build` defines BUILD_VERSION; running from source falls back to package.json.
declare const BUILD_VERSION: string | undefined;

export const VERSION: string = typeof BUILD_VERSION === "string" ? BUILD_VERSION : pkg.version;
