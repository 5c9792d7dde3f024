// `npm run build` defines BUILD_VERSION as the package version; from source it is a dev build.
declare const BUILD_VERSION: string | undefined;

export const VERSION: string = typeof BUILD_VERSION === "string" ? BUILD_VERSION : "0.0.0-dev";
