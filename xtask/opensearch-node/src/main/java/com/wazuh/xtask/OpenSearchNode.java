package com.wazuh.xtask;

import org.opensearch.action.admin.cluster.health.ClusterHealthRequest;
import org.opensearch.action.admin.cluster.health.ClusterHealthResponse;
import org.opensearch.cluster.health.ClusterHealthStatus;
import org.opensearch.common.settings.Settings;
import org.opensearch.common.unit.TimeValue;
import org.opensearch.core.common.transport.TransportAddress;
import org.opensearch.env.Environment;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Starts a real single-node OpenSearch from the jars on the classpath, for tests and local development.
 *
 * <pre>
 * java -Xms512m -Xmx512m -cp 'target/opensearch-node.jar:target/lib/*' com.wazuh.xtask.OpenSearchNode \
 *      --port 0 --data /tmp/os1 [--cluster-name NAME] [--exit-on-stdin-close] [-E key=value]...
 * </pre>
 *
 * When HTTP is bound and cluster health is at least yellow it prints exactly one line to stdout,
 * {@code opensearch ready http://127.0.0.1:PORT}, and writes the same URL to {@code DIR/ready}.
 * Everything else (logs, errors) goes to stderr. SIGTERM/SIGINT close the node and exit 0.
 */
public final class OpenSearchNode {

    /** The modules a stock OpenSearch distribution would load from modules/, passed as classpath plugins. */
    private static final List<Class<? extends Plugin>> PLUGINS = List.of(
        org.opensearch.transport.Netty4Plugin.class,           // HTTP + transport (netty4)
        org.opensearch.painless.PainlessPlugin.class,          // painless scripts (_update, _update_by_query)
        org.opensearch.index.reindex.ReindexPlugin.class,      // _reindex, _update_by_query, _delete_by_query
        org.opensearch.analysis.common.CommonAnalysisPlugin.class // standard analyzers/tokenizers/filters
    );

    private static final String USAGE =
        "usage: OpenSearchNode --port PORT --data DIR [--cluster-name NAME] [--node-name NAME]\n"
            + "                      [--exit-on-stdin-close] [--exit-when-ready] [--ready-timeout SECONDS]\n"
            + "                      [-E key=value]...\n"
            + "  --port 0 picks a free HTTP port; DIR is created and holds home/, data/, logs/ and the ready file.";

    /** A Node that hands its classpath plugins to the protected constructor (the public one loads none). */
    static final class ClasspathPluginsNode extends Node {
        ClasspathPluginsNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    /** Status the JVM exits with once the shutdown hook has closed the node (0 for SIGTERM/SIGINT/stdin EOF). */
    private static volatile int exitStatus = 0;

    private OpenSearchNode() {}

    /** Exits through the shutdown hook (which closes the node) with the given status. */
    private static void exit(int status) {
        exitStatus = status;
        System.exit(status);
    }

    public static void main(String[] args) {
        final PrintStream stdout = System.out;
        final PrintStream stderr = System.err;
        Options options;
        try {
            options = Options.parse(args);
        } catch (IllegalArgumentException e) {
            stderr.println("opensearch-node: " + e.getMessage());
            stderr.println(USAGE);
            System.exit(2);
            return;
        }
        setDefaultSystemProperties();

        final CountDownLatch stopped = new CountDownLatch(1);
        try {
            final Path dir = options.data.toAbsolutePath().normalize();
            final Path home = dir.resolve("home");
            final Path readyFile = dir.resolve("ready");
            Files.createDirectories(dir);
            // Own DIR before touching anything in it (a second launcher must not delete the first one's ready file).
            // The lock is held until the JVM exits.
            final FileChannel lockChannel = FileChannel.open(dir.resolve("launcher.lock"),
                StandardOpenOption.CREATE, StandardOpenOption.WRITE);
            if (lockChannel.tryLock() == null) {
                lockChannel.close();
                throw new IllegalStateException(dir + " is in use by another opensearch-node");
            }
            Files.deleteIfExists(readyFile);
            Files.createDirectories(dir.resolve("logs")); // node.portsfile writes http.ports/transport.ports here
            Files.createDirectories(home.resolve("config"));
            Files.createDirectories(home.resolve("plugins"));
            Files.createDirectories(home.resolve("modules"));

            final Settings.Builder settings = Settings.builder()
                .put("cluster.name", options.clusterName)
                .put("node.name", options.nodeName)
                .put("path.home", home.toString())
                .put("path.data", dir.resolve("data").toString())
                .put("path.logs", dir.resolve("logs").toString())
                .put("network.host", "127.0.0.1")
                .put("http.port", options.port)
                .put("transport.port", "0")
                .put("discovery.type", "single-node")
                .put("node.portsfile", true)
                .put("cluster.routing.allocation.disk.threshold_enabled", false)
                // a single node can never allocate replicas: make new indices green unless a template says otherwise
                .put("cluster.default_number_of_replicas", 0);
            for (Map.Entry<String, String> e : options.extraSettings.entrySet()) {
                settings.put(e.getKey(), e.getValue());
            }

            final Environment environment = InternalSettingsPreparer.prepareEnvironment(
                settings.build(), Map.of(), home.resolve("config"), () -> options.nodeName);
            final Node node = new ClasspathPluginsNode(environment, PLUGINS);

            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                try {
                    node.close();
                    if (!node.awaitClose(10, TimeUnit.SECONDS)) {
                        stderr.println("opensearch-node: node did not close within 10s");
                    }
                } catch (Exception e) {
                    stderr.println("opensearch-node: error while closing: " + e);
                } finally {
                    try {
                        Files.deleteIfExists(readyFile);
                    } catch (IOException ignored) {
                        // best effort
                    }
                    org.apache.logging.log4j.LogManager.shutdown();
                    stopped.countDown();
                    stdout.flush();
                    stderr.flush();
                    // A JVM ended by a signal would otherwise exit 128+signal even after a clean close; report the
                    // close as a success (or the start-up failure status), like a service manager expects.
                    Runtime.getRuntime().halt(exitStatus);
                }
            }, "opensearch-node-shutdown"));

            if (options.exitOnStdinClose) {
                Thread watcher = new Thread(() -> {
                    try (InputStream in = System.in) {
                        byte[] buf = new byte[256];
                        while (in.read(buf) >= 0) {
                            // discard; we only care about EOF
                        }
                    } catch (IOException ignored) {
                        // treat as closed
                    }
                    stderr.println("opensearch-node: stdin closed, shutting down");
                    exit(0);
                }, "opensearch-node-stdin-watcher");
                watcher.setDaemon(true);
                watcher.start();
            }

            node.start();

            final HttpServerTransport http = node.injector().getInstance(HttpServerTransport.class);
            final TransportAddress address = http.boundAddress().publishAddress();
            final int port = address.address().getPort();

            final ClusterHealthResponse health = node.client().admin().cluster()
                .health(new ClusterHealthRequest().waitForYellowStatus().timeout(TimeValue.timeValueSeconds(options.readyTimeoutSeconds)))
                .actionGet();
            if (health.isTimedOut() || health.getStatus() == ClusterHealthStatus.RED) {
                throw new IllegalStateException("cluster health did not reach yellow within "
                    + options.readyTimeoutSeconds + "s (status " + health.getStatus() + ")");
            }

            final String url = "http://127.0.0.1:" + port;
            final Path tmp = dir.resolve("ready.tmp");
            Files.writeString(tmp, url, StandardCharsets.UTF_8); // exactly the URL, no newline
            Files.move(tmp, readyFile, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            stdout.println("opensearch ready " + url);
            stdout.flush();
            if (options.exitWhenReady) {
                exit(0); // e.g. a class-data-sharing training run: -XX:ArchiveClassesAtExit=...
            }
        } catch (Throwable t) {
            stderr.println("opensearch-node: failed to start: " + t);
            t.printStackTrace(stderr);
            stderr.flush();
            exit(1); // runs the shutdown hook, which closes the node if it exists
            return;
        }

        // The node's threads are daemons: keep the JVM alive until the shutdown hook has closed the node.
        while (true) {
            try {
                stopped.await();
                return;
            } catch (InterruptedException ignored) {
                // keep waiting
            }
        }
    }

    /**
     * The system properties the stock distribution passes on the command line (SystemJvmOptions in 2.x), applied here
     * unless given with -D. Setting them in main works because none of the classes that read them is loaded yet.
     */
    private static void setDefaultSystemProperties() {
        // log4j must not stop before our shutdown hook has closed the node (the node logs while closing)
        setIfAbsent("log4j.shutdownHookEnabled", "false");
        setIfAbsent("log4j2.disable.jmx", "true");
        // SPI loads OpenSearch's IsoCalendarDataProvider; COMPAT keeps 2.x date parsing/formatting as in the distribution
        setIfAbsent("java.locale.providers", "SPI,COMPAT");
        // netty as configured by the distribution
        setIfAbsent("io.netty.noUnsafe", "true");
        setIfAbsent("io.netty.noKeySetOptimization", "true");
        setIfAbsent("io.netty.recycler.maxCapacityPerThread", "0");
        setIfAbsent("io.netty.allocator.numDirectArenas", "0");
        setIfAbsent("jna.nosys", "true");
    }

    private static void setIfAbsent(String key, String value) {
        if (System.getProperty(key) == null) {
            System.setProperty(key, value);
        }
    }

    static final class Options {
        String port;
        Path data;
        String clusterName = "opensearch";
        String nodeName = "opensearch-node";
        boolean exitOnStdinClose;
        boolean exitWhenReady;
        long readyTimeoutSeconds = 120;
        final Map<String, String> extraSettings = new LinkedHashMap<>();

        static Options parse(String[] args) {
            Options o = new Options();
            List<String> rest = new ArrayList<>(List.of(args));
            for (int i = 0; i < rest.size(); i++) {
                String a = rest.get(i);
                String value = null;
                int eq = a.indexOf('=');
                if (a.startsWith("--") && eq > 0) {
                    value = a.substring(eq + 1);
                    a = a.substring(0, eq);
                }
                switch (a) {
                    case "--port":
                        o.port = value != null ? value : next(rest, ++i, a);
                        try {
                            int p = Integer.parseInt(o.port);
                            if (p < 0 || p > 65535) throw new NumberFormatException();
                        } catch (NumberFormatException e) {
                            throw new IllegalArgumentException("--port must be 0..65535, got " + o.port);
                        }
                        break;
                    case "--data":
                        o.data = Paths.get(value != null ? value : next(rest, ++i, a));
                        break;
                    case "--cluster-name":
                        o.clusterName = value != null ? value : next(rest, ++i, a);
                        break;
                    case "--node-name":
                        o.nodeName = value != null ? value : next(rest, ++i, a);
                        break;
                    case "--ready-timeout":
                        o.readyTimeoutSeconds = Long.parseLong(value != null ? value : next(rest, ++i, a));
                        break;
                    case "--exit-on-stdin-close":
                        o.exitOnStdinClose = true;
                        break;
                    case "--exit-when-ready":
                        o.exitWhenReady = true;
                        break;
                    case "-E":
                    case "--setting": {
                        String kv = value != null ? value : next(rest, ++i, a);
                        int k = kv.indexOf('=');
                        if (k <= 0) throw new IllegalArgumentException(a + " expects key=value, got " + kv);
                        o.extraSettings.put(kv.substring(0, k), kv.substring(k + 1));
                        break;
                    }
                    case "-h":
                    case "--help":
                        System.out.println(USAGE);
                        System.exit(0);
                        break;
                    default:
                        if (a.startsWith("-E") && a.length() > 2) {
                            String kv = a.substring(2);
                            int k = kv.indexOf('=');
                            if (k <= 0) throw new IllegalArgumentException("-E expects key=value, got " + kv);
                            o.extraSettings.put(kv.substring(0, k), kv.substring(k + 1));
                            break;
                        }
                        throw new IllegalArgumentException("unknown argument: " + rest.get(i));
                }
            }
            if (o.port == null) throw new IllegalArgumentException("--port is required");
            if (o.data == null) throw new IllegalArgumentException("--data is required");
            return o;
        }

        private static String next(List<String> args, int i, String flag) {
            if (i >= args.size()) throw new IllegalArgumentException(flag + " needs a value");
            return args.get(i);
        }
    }
}
