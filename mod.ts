/**
 * Decentralized language-model training on Deno: DiLoCo-style local training
 * with WGSL kernels on WebGPU, and the run's roles (trainers, gradient
 * aggregators, checkpoint keepers, a membership tracker) as supervised actors
 * that talk msgpack over WebSockets.
 *
 * This module is the public entry point for embedding the system in another
 * Deno service.
 *
 * @module
 */
export * from "./kernels/device.ts";
export * from "./actors/mod.ts";
