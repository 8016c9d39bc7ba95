//
// The cheap checks of the user's inputs, made in the head before any task is submitted, so that every
// problem of a launch comes back in one message (with the parameter checks of LayerwiseSchema):
//   --languages  against the prompts file (a prompt per language)
//   --input      the samplesheet's header against the columns the run needs, naming the user's file
//   --layers     against the model's depth, when its config.json is on this machine (a local folder or the
//                Hugging Face cache); the grammar is the schema's pattern
// PREFLIGHT keeps the deep checks (decoding every image, tokenising captions, weight files) and is the one
// place that decides them; these checks only move the cheap ones forward. The layer-spec rules follow
// layerwise/core/layers.py: both are tested against tests/layer_spec_cases.json.
//

import groovy.json.JsonSlurper
import java.nio.charset.StandardCharsets
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths

class LayerwiseInputs {

    /** Every problem of the run's inputs, one line each ([] when none or when an input cannot be read here). */
    static List<String> check(Map params, Path projectDir, Map<String, String> env = System.getenv()) {
        List<String> errors = []
        List<String> langs = languages(params.languages)
        Path prompts = localFile(params.prompts, projectDir)
        Set<String> prompted = null
        if (prompts != null) {
            try {
                def parsed = new JsonSlurper().parse(prompts.toFile())
                if (parsed instanceof Map) prompted = (parsed as Map).keySet().collect { it.toString() } as Set
            } catch (Exception ignored) { /* unreadable prompts: PREFLIGHT reports it */ }
        }
        if (prompted != null) {
            List<String> missing = langs.findAll { it ==~ LANGUAGE && !(it in prompted) }
            if (missing)
                errors << "--languages: no prompt for ${missing.collect { "'${it}'" }.join(', ')} in ${prompts} " +
                          "(languages with a prompt: ${prompted.join(', ')}; add one there or pass --prompts)"
        }
        errors += samplesheetColumns(params.input, langs, projectDir)
        Integer depth = null
        String depthSource = null
        if (params.model instanceof CharSequence && params.model) {
            Path config = modelConfig(params.model.toString(), params.model_revision ? params.model_revision.toString() : null, env)
            if (config != null) {
                depth = decoderLayers(config)
                depthSource = config.toString()
            }
        }
        if (depth != null && params.layers != null && !(params.layers instanceof Boolean)) {
            def parsed = parseLayers(params.layers.toString(), depth)
            if (parsed instanceof CharSequence) errors << "${parsed} (from ${depthSource})".toString()
        }
        return errors
    }

    static final String LANGUAGE = /[a-z_]+/

    /** --languages as PREFLIGHT reads it: comma/space separated, lower case, de-duplicated, in order. */
    static List<String> languages(Object spec) {
        if (spec == null || spec instanceof Boolean) return []
        return spec.toString().split(/[\s,]+/).collect { it.trim().toLowerCase() }.findAll { it }.unique()
    }

    private static Path localFile(Object value, Path projectDir) {
        if (!(value instanceof CharSequence) || !value) return null
        String s = value.toString().replaceFirst(/^~(?=\/|$)/, System.getProperty('user.home'))
        if (s ==~ /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/.*/) return null        // remote: read by the task
        Path p = Paths.get(s)
        if (!p.isAbsolute()) p = Paths.get(System.getProperty('user.dir')).resolve(p)
        return Files.isRegularFile(p) ? p.normalize() : null
    }

    /**
     * The columns the run needs that the samplesheet's header lacks (schema_input.json's required columns and
     * caption_<language> per --languages), naming the user's file. A file this check cannot read is left to
     * PREFLIGHT, which says why.
     */
    static List<String> samplesheetColumns(Object input, List<String> langs, Path projectDir) {
        Path sheet = localFile(input, projectDir)
        if (sheet == null) return []
        String delimiter = sheet.fileName.toString().toLowerCase().endsWith('.tsv') ? '\t' : ','
        String header = null
        try {
            Files.newBufferedReader(sheet, StandardCharsets.UTF_8).withCloseable { reader ->
                String line
                while ((line = reader.readLine()) != null) {
                    line = line.replaceFirst(/^\uFEFF/, '')
                    if (line.split(delimiter == '\t' ? /\t/ : /,/).any { it.trim() }) { header = line; break }
                }
            }
        } catch (Exception ignored) {
            return []     // not UTF-8 text, unreadable: PREFLIGHT names the problem
        }
        if (header == null || !header.contains(delimiter)) return []     // empty, or another delimiter: PREFLIGHT
        List<String> columns = header.split(delimiter == '\t' ? /\t/ : /,/, -1)
            .collect { it.trim().replaceAll(/^"(.*)"$/, '$1').trim().toLowerCase() }
        List<String> needed = requiredColumns(projectDir) + langs.findAll { it ==~ LANGUAGE }.collect { "caption_${it}".toString() }
        List<String> missing = needed.findAll { !(it in columns) }
        if (!missing) return []
        return ["--input ${sheet}: the samplesheet has no column ${missing.collect { "'${it}'" }.join(', ')} " +
                "(its header: ${columns.findAll { it }.join(',')}; it needs ${needed.join(',')}: one caption_<language> " +
                "column per --languages)"]
    }

    /** assets/schema_input.json's required columns (sample_id, image, gender). */
    static List<String> requiredColumns(Path projectDir) {
        Map schema = new JsonSlurper().parse(projectDir.resolve('assets/schema_input.json').toFile()) as Map
        return ((schema.items as Map).required as List).collect { it.toString() }
    }

    /**
     * The model's config.json on this machine: the local model folder's, or the Hugging Face cache's snapshot
     * of the revision (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub); null when not here
     * (PREFLIGHT resolves it, downloading if it may).
     */
    static Path modelConfig(String model, String revision, Map<String, String> env) {
        Path local = Paths.get(model.replaceFirst(/^~(?=\/|$)/, System.getProperty('user.home')))
        if (Files.isDirectory(local)) {
            Path c = local.resolve('config.json')
            return Files.isRegularFile(c) ? c : null
        }
        if (!(model ==~ /[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*/)) return null
        String hub = env.HF_HUB_CACHE ?: (env.HF_HOME ? "${env.HF_HOME}/hub" : "${System.getProperty('user.home')}/.cache/huggingface/hub")
        Path repo = Paths.get(hub).resolve("models--${model.replace('/', '--')}")
        String rev = revision ?: 'main'
        String commit = rev ==~ /[0-9a-f]{40}/ ? rev : null
        if (commit == null) {
            Path ref = repo.resolve("refs/${rev}")
            if (!Files.isRegularFile(ref)) return null
            commit = ref.text.trim()
        }
        Path c = repo.resolve("snapshots/${commit}/config.json")
        return Files.isRegularFile(c) ? c : null
    }

    /** Decoder layers of a config.json, as layerwise reads them (the text config's num_hidden_layers); null if unknown. */
    static Integer decoderLayers(Path config) {
        try {
            Map c = new JsonSlurper().parse(config.toFile()) as Map
            def n = c.text_config instanceof Map ? (c.text_config as Map).num_hidden_layers : c.num_hidden_layers
            return n instanceof Number && (n as int) > 0 ? (n as int) : null
        } catch (Exception ignored) {
            return null
        }
    }

    /** A layer spec's sorted layers for a model of numLayers decoder layers, or the error message (a CharSequence). */
    static Object parseLayers(String spec, int numLayers) {
        String valid = "valid layers are [0, ${numLayers}), i.e. ${numLayers == 1 ? '0' : "0-${numLayers - 1}"}"
        List<String> tokens = spec.trim().split(/[\s,]+/).findAll { it } as List<String>
        if (!tokens) return "--layers is empty: give 'all', a range such as '0-${numLayers - 1}', or a list such as '0 10 14-18' (${valid})"
        Set<Integer> layers = new TreeSet<>()
        for (String token : tokens) {
            if (token.equalsIgnoreCase('all')) { (0..<numLayers).each { layers << it }; continue }
            BigInteger start, end
            def range = token =~ /^([0-9]+)-([0-9]+)$/
            if (token ==~ /[0-9]+/) {
                start = end = new BigInteger(token)
            } else if (range.matches()) {
                start = new BigInteger(range.group(1)); end = new BigInteger(range.group(2))
                if (start > end)
                    return "--layers: range '${token}' is reversed (start > end); write '${end}-${start}' (${valid})"
            } else if (token ==~ /-[0-9]+(-[0-9]+)?|[0-9]+--[0-9]+/) {
                return "--layers: '${token}' is negative; layers are numbered from 0, ${valid}"
            } else {
                return "--layers: cannot read '${token}'; use 'all', single layers ('14') and ranges ('14-18', no spaces " +
                       "inside) separated by spaces or commas (${valid})"
            }
            if (end >= numLayers) {
                String where = start == end ? '' : " (in '${token}')"
                return "--layers: layer ${end}${where} is out of range; the model has ${numLayers} decoder layers, ${valid}"
            }
            (start.intValue()..end.intValue()).each { layers << it }
        }
        return layers as List<Integer>
    }
}
